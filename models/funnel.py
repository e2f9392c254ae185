"""The funnel tables: ``funnel_events`` (one row per fact) and ``episodes`` (one summary row per
member and episode, kept up to date in the same transaction as the events; reports read only
this table). Rows name a member by id only and go with it (``reauth forget``, ON DELETE
CASCADE as a backstop). See docs/FUNNEL.md.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId


class FunnelEvent(Base):
    __tablename__ = "funnel_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    episode: Mapped[int] = mapped_column(Integer)
    #: :class:`worker.core.funnel.Stage`
    stage: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    reminder: Mapped[int | None] = mapped_column(Integer)
    #: detected: the reason; result: success or the error reason
    detail: Mapped[str | None] = mapped_column(String(32))
    #: detected: scan | webhook | import | rerun
    how: Mapped[str | None] = mapped_column(String(8))

    __table_args__ = (
        # A member's path (history, erasure) and retention by age.
        Index("ix_funnel_events_member", "member_id", "episode"),
        Index("ix_funnel_events_at", "at"),
    )


class Episode(Base):
    __tablename__ = "episodes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    episode: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(16))
    institution_code: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str | None] = mapped_column(String(8))
    detected_at: Mapped[datetime]
    detected_how: Mapped[str] = mapped_column(String(8))
    link_at: Mapped[datetime | None]
    notified_at: Mapped[datetime | None]
    clicked_at: Mapped[datetime | None]
    opened_at: Mapped[datetime | None]
    result_at: Mapped[datetime | None]
    result: Mapped[str | None] = mapped_column(String(32))
    confirmed_at: Mapped[datetime | None]
    aggregated_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    converting_reminder: Mapped[int | None] = mapped_column(Integer)
    reconnect_s: Mapped[int | None] = mapped_column(Integer)
    #: :class:`worker.core.funnel.Outcome`; NULL while open
    outcome: Mapped[str | None] = mapped_column(String(20))

    __table_args__ = (
        Index("uq_episodes_member_episode", "member_id", "episode", unique=True),
        # The report: a range of detected_at (and retention by age).
        Index("ix_episodes_detected_at", "detected_at"),
    )
