"""A partial index on ``(root_job_id, due_at)``: a run's jobs not due yet, found without a scan.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX = "ix_jobtrace_jobs_root_job_id_due_at"


def upgrade() -> None:
    op.create_index(
        INDEX,
        "jobtrace_jobs",
        ["root_job_id", "due_at"],
        sqlite_where=sa.text("due_at IS NOT NULL"),
        postgresql_where=sa.text("due_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobtrace_jobs")
