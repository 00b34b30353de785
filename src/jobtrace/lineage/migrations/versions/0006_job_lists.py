"""Indexes for the dashboard's job lists and queue view (issue 9).

- ``(root_job_id, depth, name, state, enqueued_at, job_id)``: a run's stage in one state, oldest
  first, is one index range; every keyset page of it starts where the last one ended.
- ``(state, queue, root_job_id, enqueued_at, due_at)`` of active jobs only (partial): the queue
  view across runs reads it alone, however many finished jobs the store keeps.
- ``(trace_id)``: the jobs of one trace, from a trace id found in the tracing UI.

On a big PostgreSQL store, build them first without blocking writers, then upgrade (the upgrade
finds them there)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_stage_list
        ON jobtrace_jobs (root_job_id, depth, name, state, enqueued_at, job_id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_active_queues
        ON jobtrace_jobs (state, queue, root_job_id, enqueued_at, due_at)
        WHERE state IN ('queued', 'retrying', 'stalled', 'running');
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_trace_id
        ON jobtrace_jobs (trace_id);

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STAGE_LIST = "ix_jobtrace_jobs_stage_list"
ACTIVE_QUEUES = "ix_jobtrace_jobs_active_queues"
TRACE = "ix_jobtrace_jobs_trace_id"
#: As ``jobtrace.lineage.models.ACTIVE_QUEUE_STATES`` writes it (the queries repeat it literally).
ACTIVE = "state IN ('queued', 'retrying', 'stalled', 'running')"


def upgrade() -> None:
    op.create_index(
        STAGE_LIST,
        "jobtrace_jobs",
        ["root_job_id", "depth", "name", "state", "enqueued_at", "job_id"],
        if_not_exists=True,
    )
    op.create_index(
        ACTIVE_QUEUES,
        "jobtrace_jobs",
        ["state", "queue", "root_job_id", "enqueued_at", "due_at"],
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
        if_not_exists=True,
    )
    op.create_index(TRACE, "jobtrace_jobs", ["trace_id"], if_not_exists=True)


def downgrade() -> None:
    for name in (TRACE, ACTIVE_QUEUES, STAGE_LIST):
        op.drop_index(name, table_name="jobtrace_jobs")
