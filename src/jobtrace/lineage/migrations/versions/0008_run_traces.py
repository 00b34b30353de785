"""An index for the run page's trace list: a run's trace ids and their times from it alone.

- ``(root_job_id, trace_id, enqueued_at, started_at, finished_at)``: the distinct trace ids of a
  run (a run split into many traces by the automatic fan-out split), how many jobs each holds
  and when they ran, as one index-only range grouped in index order. Without it the run page
  read up to 20,000 of the run's rows from the table (about a third of its time on SQLite).

On a big PostgreSQL store, build it first without blocking writers, then upgrade (the upgrade
finds it there)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_run_traces
        ON jobtrace_jobs (root_job_id, trace_id, enqueued_at, started_at, finished_at);

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RUN_TRACES = "ix_jobtrace_jobs_run_traces"


def upgrade() -> None:
    op.create_index(
        RUN_TRACES,
        "jobtrace_jobs",
        ["root_job_id", "trace_id", "enqueued_at", "started_at", "finished_at"],
        if_not_exists=True,
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        stats = "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        if bind.exec_driver_sql(stats).first() is not None:
            # As in 0007: a store analyzed before needs statistics of the new index too.
            op.execute(f"ANALYZE {RUN_TRACES}")


def downgrade() -> None:
    op.drop_index(RUN_TRACES, table_name="jobtrace_jobs")
