"""Indexes for the run page: its counts and times from indexes alone (issue 9, benchmarks).

- ``(root_job_id, depth, name, queue, state, due_at, enqueued_at, started_at, finished_at)``:
  a run's stage × queue × state counts, scheduled jobs, the oldest waiting job and the latest
  start and finish per queue (the stuck check), and each stage's first and last times and
  percentile samples (stage times) are one index-only range in index order. ``heartbeat_at`` is
  left out: heartbeats would rewrite the entry; the few groups with active jobs read it.
- ``(root_job_id, depth, name, parent_job_id)``: "from N parents" groups a stage's jobs by parent
  in index order, and only one row per parent is then read for its name.

On a big PostgreSQL store, build them first without blocking writers, then upgrade (the upgrade
finds them there)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_stage_queues
        ON jobtrace_jobs (root_job_id, depth, name, queue, state, due_at, enqueued_at,
                          started_at, finished_at);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_stage_parents
        ON jobtrace_jobs (root_job_id, depth, name, parent_job_id);

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STAGE_QUEUES = "ix_jobtrace_jobs_stage_queues"
STAGE_PARENTS = "ix_jobtrace_jobs_stage_parents"


def upgrade() -> None:
    op.create_index(
        STAGE_QUEUES,
        "jobtrace_jobs",
        [
            "root_job_id",
            "depth",
            "name",
            "queue",
            "state",
            "due_at",
            "enqueued_at",
            "started_at",
            "finished_at",
        ],
        if_not_exists=True,
    )
    op.create_index(
        STAGE_PARENTS,
        "jobtrace_jobs",
        ["root_job_id", "depth", "name", "parent_job_id"],
        if_not_exists=True,
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        stats = "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        if bind.exec_driver_sql(stats).first() is not None:
            # A store analyzed before has statistics for every index but these: SQLite's planner
            # then misjudges them (a run's stage counts took the new index and sorted).
            for name in (STAGE_QUEUES, STAGE_PARENTS):
                op.execute(f"ANALYZE {name}")


def downgrade() -> None:
    for name in (STAGE_PARENTS, STAGE_QUEUES):
        op.drop_index(name, table_name="jobtrace_jobs")
