"""The re-authentication funnel: funnel_events and the episodes summary.

Revision ID: a7b8c9d0e1f2
Revises: b8c9d0e1f2a3
Create Date: 2026-11-30 14:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from models.base import UTCDateTime

revision: str = "a7b8c9d0e1f2"
down_revision: str | None = "b8c9d0e1f2a3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                     autoincrement=True, nullable=False)  # fmt: skip


def _member() -> sa.Column[int]:
    return sa.Column("member_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                     nullable=False)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "funnel_events",
        _id(),
        _member(),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("reminder", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(length=32), nullable=True),
        sa.Column("how", sa.String(length=8), nullable=True),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE",
                                name=op.f("fk_funnel_events_member_id_members")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_funnel_events")),
    )  # fmt: skip
    op.create_index("ix_funnel_events_member", "funnel_events", ["member_id", "episode"])
    op.create_index("ix_funnel_events_at", "funnel_events", ["at"])
    t = UTCDateTime
    op.create_table(
        "episodes",
        _id(),
        _member(),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=True),
        sa.Column("institution_code", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=8), nullable=True),
        sa.Column("detected_at", t(), nullable=False),
        sa.Column("detected_how", sa.String(length=8), nullable=False),
        sa.Column("link_at", t(), nullable=True),
        sa.Column("notified_at", t(), nullable=True),
        sa.Column("clicked_at", t(), nullable=True),
        sa.Column("opened_at", t(), nullable=True),
        sa.Column("result_at", t(), nullable=True),
        sa.Column("result", sa.String(length=32), nullable=True),
        sa.Column("confirmed_at", t(), nullable=True),
        sa.Column("aggregated_at", t(), nullable=True),
        sa.Column("ended_at", t(), nullable=True),
        sa.Column("reminders_sent", sa.Integer(), nullable=False),
        sa.Column("converting_reminder", sa.Integer(), nullable=True),
        sa.Column("reconnect_s", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], ondelete="CASCADE",
                                name=op.f("fk_episodes_member_id_members")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_episodes")),
    )  # fmt: skip
    op.create_index(
        "uq_episodes_member_episode", "episodes", ["member_id", "episode"], unique=True
    )
    op.create_index("ix_episodes_detected_at", "episodes", ["detected_at"])


def downgrade() -> None:
    op.drop_index("ix_episodes_detected_at", table_name="episodes")
    op.drop_index("uq_episodes_member_episode", table_name="episodes")
    op.drop_table("episodes")
    op.drop_index("ix_funnel_events_at", table_name="funnel_events")
    op.drop_index("ix_funnel_events_member", table_name="funnel_events")
    op.drop_table("funnel_events")
