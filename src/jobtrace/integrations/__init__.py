"""Instrumentors for job queues: one module per library, each depending on the core only.

Each module imports its library at top level, so ``opentelemetry-instrument`` skips it quietly when
the library is not installed.
"""
