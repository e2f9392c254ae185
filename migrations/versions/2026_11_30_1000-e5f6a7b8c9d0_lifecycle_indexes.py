"""Data lifecycle: time indexes for retention, cleared links on sent notifications, members by
user (erasure).

Revision ID: e5f6a7b8c9d0
Revises: d4e5f6a7b8c9
Create Date: 2026-11-30 10:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from models.base import UTCDateTime

revision: str = "e5f6a7b8c9d0"
down_revision: str | None = "d4e5f6a7b8c9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE_LINK = "status = 'sent' AND link_cleared_at IS NULL"
_MEMBER_LINK = "oauth_window_uri IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("link_cleared_at", UTCDateTime(), nullable=True))
    op.create_index("ix_attempts_created_at", "attempts", ["created_at"])
    op.create_index("ix_clicks_created_at", "clicks", ["created_at"])
    op.create_index("ix_clicks_notification_id", "clicks", ["notification_id"])
    op.create_index("ix_notifications_status_created", "notifications", ["status", "created_at"])
    op.create_index(
        "ix_notifications_live_link", "notifications", ["sent_at"],
        postgresql_where=sa.text(_LIVE_LINK), sqlite_where=sa.text(_LIVE_LINK),
    )  # fmt: skip
    op.create_index("ix_members_user_guid", "members", ["user_guid"])
    op.create_index(
        "ix_members_live_link", "members", ["uri_generated_at"],
        postgresql_where=sa.text(_MEMBER_LINK), sqlite_where=sa.text(_MEMBER_LINK),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_members_live_link", table_name="members")
    op.drop_index("ix_members_user_guid", table_name="members")
    op.drop_index("ix_notifications_live_link", table_name="notifications")
    op.drop_index("ix_notifications_status_created", table_name="notifications")
    op.drop_index("ix_clicks_notification_id", table_name="clicks")
    op.drop_index("ix_clicks_created_at", table_name="clicks")
    op.drop_index("ix_attempts_created_at", table_name="attempts")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("link_cleared_at")
