"""One message per person: the group an outbox row was delivered in.

Revision ID: b8c9d0e1f2a3
Revises: f6a7b8c9d0e1
Create Date: 2026-11-30 14:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b8c9d0e1f2a3"
down_revision: str | None = "f6a7b8c9d0e1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("group_id", sa.Uuid(), nullable=True))
    op.create_index("ix_notifications_group_id", "notifications", ["group_id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_group_id", table_name="notifications")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("group_id")
