"""Alembic migrations of the lineage schema; run them with ``jobtrace db upgrade``."""
