"""The first lineage schema: jobs (latest attempt, place in the tree) and attempts (audit trail).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobtrace.lineage.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(255)
NAME = sa.String(255)


def _attempt_columns() -> list[sa.Column[object]]:
    """Columns that describe one attempt, in both tables."""
    return [
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
        sa.Column("error_type", NAME),
        sa.Column("error_message", sa.Text()),
        sa.Column("reason", sa.Text()),
        sa.Column("host", NAME),
        sa.Column("pid", sa.Integer()),
        sa.Column("enqueued_at", UTCDateTime()),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("heartbeat_at", UTCDateTime()),
    ]


def upgrade() -> None:
    op.create_table(
        "jobtrace_jobs",
        sa.Column("job_id", ID, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("queue", NAME),
        sa.Column("system", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("parent_job_id", ID),
        sa.Column("root_job_id", ID, nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("args", sa.Text()),
        sa.Column("items_total", sa.Integer()),
        sa.Column("items_processed", sa.Integer()),
        sa.Column("items_failed", sa.Integer()),
        sa.Column("items_skipped", sa.Integer()),
        sa.Column("progress", sa.Float()),
        *_attempt_columns(),
        sa.Column("updated_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("job_id", name="pk_jobtrace_jobs"),
    )
    op.create_index(
        "ix_jobtrace_jobs_root_job_id_depth_name_state",
        "jobtrace_jobs",
        ["root_job_id", "depth", "name", "state"],
    )
    op.create_index(
        "ix_jobtrace_jobs_parent_job_id_state", "jobtrace_jobs", ["parent_job_id", "state"]
    )
    op.create_index(
        "ix_jobtrace_jobs_state_heartbeat_at", "jobtrace_jobs", ["state", "heartbeat_at"]
    )
    op.create_index("ix_jobtrace_jobs_depth_enqueued_at", "jobtrace_jobs", ["depth", "enqueued_at"])
    op.create_table(
        "jobtrace_attempts",
        sa.Column("job_id", ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        *_attempt_columns(),
        sa.PrimaryKeyConstraint("job_id", "attempt", name="pk_jobtrace_attempts"),
    )


def downgrade() -> None:
    op.drop_table("jobtrace_attempts")
    op.drop_table("jobtrace_jobs")
