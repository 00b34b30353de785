"""Fewer index entries for the writer: ``(state, heartbeat_at)`` goes, ``(depth, enqueued_at)``
holds roots only, the rare states get a partial index (issue 8).

Every index of ``jobtrace_jobs`` costs every record the writer stores (an upsert sets every
column on SQLite; on PostgreSQL no update is HOT), unless the row is outside a partial index's
predicate before and after the write.

- ``(state, heartbeat_at)`` served the reaper alone, which reads jobs in one state (``running``,
  ``queued``) by an expression of their times: revision 0006's partial
  ``ix_jobtrace_jobs_active_queues``, which leads with ``state`` and holds exactly the jobs on a
  queue, answers the same range (the reaper writes the index's predicate out, so SQLite sees
  that its query implies it). Finished jobs were the bulk of the old index.
- Lists across runs by state alone read ``(state, heartbeat_at)`` too: the states few jobs end
  in (failed, discarded, crashed, cancelled, skipped, unknown) get a partial ``(state,
  enqueued_at, job_id)`` of their own, which pages them in order; the active states read the
  partial index of jobs on a queue. A succeeded job is in neither.
- ``(depth, enqueued_at)`` served the runs list, which reads roots only (``depth = 0``, written
  literally): it keeps its name and columns, with that predicate; a job below the root costs it
  nothing.

The new indexes hold few rows (one per run; the rare states), but building them reads the
table: on a big PostgreSQL store, that is a scan under a lock that blocks writes.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

REAPER = "ix_jobtrace_jobs_state_heartbeat_at"
RUNS = "ix_jobtrace_jobs_depth_enqueued_at"
RARE = "ix_jobtrace_jobs_rare_states"
ROOTS = "depth = 0"
RARE_STATES = (
    "(state = 'cancelled' OR state = 'crashed' OR state = 'discarded' OR state = 'failed'"
    " OR state = 'skipped' OR state = 'unknown')"
)


def upgrade() -> None:
    op.drop_index(REAPER, table_name="jobtrace_jobs", if_exists=True)
    op.drop_index(RUNS, table_name="jobtrace_jobs", if_exists=True)
    op.create_index(
        RUNS,
        "jobtrace_jobs",
        ["depth", "enqueued_at"],
        sqlite_where=sa.text(ROOTS),
        postgresql_where=sa.text(ROOTS),
    )
    op.create_index(
        RARE,
        "jobtrace_jobs",
        ["state", "enqueued_at", "job_id"],
        sqlite_where=sa.text(RARE_STATES),
        postgresql_where=sa.text(RARE_STATES),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(RARE, table_name="jobtrace_jobs", if_exists=True)
    op.drop_index(RUNS, table_name="jobtrace_jobs", if_exists=True)
    op.create_index(RUNS, "jobtrace_jobs", ["depth", "enqueued_at"])
    op.create_index(REAPER, "jobtrace_jobs", ["state", "heartbeat_at"], if_not_exists=True)
