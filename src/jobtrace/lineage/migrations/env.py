"""Alembic environment: runs on the connection :func:`jobtrace.lineage.store.upgrade` passes in."""

from __future__ import annotations

from alembic import context

from jobtrace.lineage.models import Base
from jobtrace.lineage.store import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
