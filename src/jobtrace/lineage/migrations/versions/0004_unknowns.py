"""What the store does not know, said honestly; what a heartbeat promised; where records were lost.

- ``root_job_id`` and ``depth`` may be NULL: a record that does not say them leaves them unknown
  instead of the writer inventing "its own root, depth 0".
- ``heartbeat_interval`` on jobs and attempts: the reaper judges "missed N heartbeats".
- ``lost_at`` on jobs: when a writer re-delivered this job's records after dropping some.
- ``jobtrace_gaps``: one row per writer outage (host, pid, from, to, records dropped), so the
  reaper can tell "we lost track" from "it crashed".

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobtrace.lineage.models import ID_LENGTH, NAME_LENGTH, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobtrace_jobs") as batch:
        batch.alter_column("root_job_id", existing_type=sa.String(ID_LENGTH), nullable=True)
        batch.alter_column("depth", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("heartbeat_interval", sa.Float()))
        batch.add_column(sa.Column("lost_at", UTCDateTime()))
    with op.batch_alter_table("jobtrace_attempts") as batch:
        batch.add_column(sa.Column("heartbeat_interval", sa.Float()))
    op.create_table(
        "jobtrace_gaps",
        sa.Column("gap_id", sa.Integer(), autoincrement=True),
        sa.Column("host", sa.String(NAME_LENGTH)),
        sa.Column("pid", sa.Integer()),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.Column("records_dropped", sa.Integer(), nullable=False),
        sa.Column("jobs_redelivered", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("gap_id", name="pk_jobtrace_gaps"),
    )
    op.create_index("ix_jobtrace_gaps_host_pid", "jobtrace_gaps", ["host", "pid"])


def downgrade() -> None:
    op.drop_index("ix_jobtrace_gaps_host_pid", table_name="jobtrace_gaps")
    op.drop_table("jobtrace_gaps")
    with op.batch_alter_table("jobtrace_attempts") as batch:
        batch.drop_column("heartbeat_interval")
    with op.batch_alter_table("jobtrace_jobs") as batch:
        batch.drop_column("lost_at")
        batch.drop_column("heartbeat_interval")
        batch.alter_column("depth", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("root_job_id", existing_type=sa.String(ID_LENGTH), nullable=False)
