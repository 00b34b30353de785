"""One index fewer for the writer: ``(root_job_id, depth, name, state)`` goes (issue 8).

Every index of ``jobtrace_jobs`` is rewritten by every record the writer stores (an upsert sets
every column on SQLite; on PostgreSQL no update is HOT, as ``state`` and ``updated_at`` are in
indexes), so each costs each record. This one is a prefix of revision 0006's ``(root_job_id,
depth, name, state, enqueued_at, job_id)``, which answers the same reads (a run's counts per
stage and state, ``stats``) as an index-only range in the same order; the plans name it instead.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STAGE_STATES = "ix_jobtrace_jobs_root_job_id_depth_name_state"


def upgrade() -> None:
    op.drop_index(STAGE_STATES, table_name="jobtrace_jobs", if_exists=True)


def downgrade() -> None:
    op.create_index(
        STAGE_STATES,
        "jobtrace_jobs",
        ["root_job_id", "depth", "name", "state"],
        if_not_exists=True,
    )
