"""An index on ``(updated_at, root_job_id)``: the runs whose rows are old, found without a scan.

``jobtrace prune`` walks it from the oldest row up to its most lenient cutoff, reading only the
index, so a store pruned daily costs little more than reading the runs kept for longer.

On a big PostgreSQL store, build it first without blocking writers, then upgrade (the upgrade
finds it there)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_updated_at_root_job_id
        ON jobtrace_jobs (updated_at, root_job_id);

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_jobtrace_jobs_updated_at_root_job_id"


def upgrade() -> None:
    op.create_index(INDEX, "jobtrace_jobs", ["updated_at", "root_job_id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobtrace_jobs")
