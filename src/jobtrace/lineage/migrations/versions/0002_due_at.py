"""Jobs scheduled for later: ``due_at``, so a delayed job counts as waiting only once it is due.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobtrace.lineage.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobtrace_jobs") as batch:
        batch.add_column(sa.Column("due_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("jobtrace_jobs") as batch:
        batch.drop_column("due_at")
