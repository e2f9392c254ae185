"""Clicks on reconnect links, and the institution's display name on members.

Revision ID: d4e5f6a7b8c9
Revises: c3d4e5f6a7b8
Create Date: 2026-11-29 22:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from models.base import UTCDateTime

revision: str = "d4e5f6a7b8c9"
down_revision: str | None = "c3d4e5f6a7b8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("institution_name", sa.String(128), nullable=True))
    op.create_table(
        "clicks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "member_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("notification_id", sa.Uuid(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("referral_source", sa.String(length=8), nullable=False),
        sa.Column("reported", sa.String(length=8), nullable=True),
        sa.Column("error_reason", sa.String(length=32), nullable=True),
        sa.Column("state_used_at", UTCDateTime(), nullable=True),
        sa.Column("confirmed_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_clicks_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["notification_id"], ["notifications.id"],
            name=op.f("fk_clicks_notification_id_notifications"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clicks")),
    )  # fmt: skip
    op.create_index("ix_clicks_member_created", "clicks", ["member_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_clicks_member_created", table_name="clicks")
    op.drop_table("clicks")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("institution_name")
