"""Indexes for a store that runs for years: prune's walk of old rows, and the runs list.

- ``(updated_at, root_job_id)``: ``jobtrace prune`` walks it from the oldest row up to its most
  lenient cutoff, reading only the index, so a store pruned daily costs little more than reading
  the runs kept for longer.
- ``(name, depth, enqueued_at)`` of roots, and ``(depth, coalesce(started_at, updated_at),
  job_id)`` of roots without an enqueue time: ``runs --name`` and the roots never enqueued
  (placeholders) are listed without reading every root. Both hold one row per run at most;
  ``depth``, fixed by their predicates, is in them so that SQLite's planner picks them.

On a big PostgreSQL store, build them first without blocking writers, then upgrade (the upgrade
finds them there)::

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_updated_at_root_job_id
        ON jobtrace_jobs (updated_at, root_job_id);
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_name_depth_enqueued_at
        ON jobtrace_jobs (name, depth, enqueued_at) WHERE depth = 0;
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobtrace_jobs_heard_roots
        ON jobtrace_jobs (depth, coalesce(started_at, updated_at), job_id)
        WHERE depth = 0 AND enqueued_at IS NULL;

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PRUNE = "ix_jobtrace_jobs_updated_at_root_job_id"
BY_NAME = "ix_jobtrace_jobs_name_depth_enqueued_at"
HEARD = "ix_jobtrace_jobs_heard_roots"
ROOTS = "depth = 0"
UNENQUEUED_ROOTS = "depth = 0 AND enqueued_at IS NULL"


def upgrade() -> None:
    op.create_index(PRUNE, "jobtrace_jobs", ["updated_at", "root_job_id"], if_not_exists=True)
    op.create_index(
        BY_NAME,
        "jobtrace_jobs",
        ["name", "depth", "enqueued_at"],
        sqlite_where=sa.text(ROOTS),
        postgresql_where=sa.text(ROOTS),
        if_not_exists=True,
    )
    op.create_index(
        HEARD,
        "jobtrace_jobs",
        ["depth", sa.text("coalesce(started_at, updated_at)"), "job_id"],
        sqlite_where=sa.text(UNENQUEUED_ROOTS),
        postgresql_where=sa.text(UNENQUEUED_ROOTS),
        if_not_exists=True,
    )


def downgrade() -> None:
    for name in (HEARD, BY_NAME, PRUNE):
        op.drop_index(name, table_name="jobtrace_jobs")
