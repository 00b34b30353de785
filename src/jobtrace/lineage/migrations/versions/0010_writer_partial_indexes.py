"""Fewer index entries for the writer: ``(state, heartbeat_at)`` goes, ``(depth, enqueued_at)``
holds roots only, the rare states get a partial index, the active states' predicate is written
as equalities (issue 8).

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
- The partial indexes' predicates are equalities joined by ``OR``, not ``IN`` lists: SQLite
  evaluates a partial index's predicate on every write of a row, and an ``IN`` list of more than
  two values builds a lookup table each time. The rare states' index is written so, and
  ``ix_jobtrace_jobs_active_queues`` (revision 0006, ``state IN ('queued', 'retrying',
  'stalled', 'running')``) is dropped and built again with ``(state = 'queued' OR state =
  'retrying' OR state = 'stalled' OR state = 'running')``; the queries that use it write the new
  text out (the downgrade restores the ``IN`` form, which the code before 0010 writes).

What no index covers any more, on SQLite: a list across runs filtered by ``succeeded`` alone, by
depth alone (``?depth=1``), or by states some active and some rare, reads the whole jobs table
(``SCAN jobtrace_jobs``; with a run, the stage-list index still serves them). That is the price
of the writer's savings: a succeeded job, the bulk of any store, is in no state index, so the
writer maintains none for it, and ``(depth, enqueued_at)`` now holds roots only. On a big
store, give such lists a run.

The new indexes hold few rows (one per run; the rare states; the active jobs), but building
them reads the table: on a big PostgreSQL store, that is a scan under a lock that blocks writes.

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
#: As ``jobtrace.lineage.models.RARE_STATES`` writes it (a migration keeps its own copy).
RARE_STATES = (
    "(state = 'cancelled' OR state = 'crashed' OR state = 'discarded' OR state = 'failed'"
    " OR state = 'skipped' OR state = 'unknown')"
)
ACTIVE_QUEUES = "ix_jobtrace_jobs_active_queues"
ACTIVE_QUEUES_COLUMNS = ["state", "queue", "root_job_id", "enqueued_at", "due_at"]
#: As ``jobtrace.lineage.models.ACTIVE_QUEUE_STATES`` writes it (the queries repeat it literally).
ACTIVE = "(state = 'queued' OR state = 'retrying' OR state = 'stalled' OR state = 'running')"
#: Revision 0006's form, which the downgrade restores.
ACTIVE_0006 = "state IN ('queued', 'retrying', 'stalled', 'running')"


def _active_queues(predicate: str) -> None:
    op.drop_index(ACTIVE_QUEUES, table_name="jobtrace_jobs", if_exists=True)
    op.create_index(
        ACTIVE_QUEUES,
        "jobtrace_jobs",
        ACTIVE_QUEUES_COLUMNS,
        sqlite_where=sa.text(predicate),
        postgresql_where=sa.text(predicate),
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
    _active_queues(ACTIVE)


def downgrade() -> None:
    _active_queues(ACTIVE_0006)
    op.drop_index(RARE, table_name="jobtrace_jobs", if_exists=True)
    op.drop_index(RUNS, table_name="jobtrace_jobs", if_exists=True)
    op.create_index(RUNS, "jobtrace_jobs", ["depth", "enqueued_at"])
    op.create_index(REAPER, "jobtrace_jobs", ["state", "heartbeat_at"], if_not_exists=True)
