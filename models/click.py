"""The ``clicks`` table: one row per press of Reconnect on a ``reconnect_url`` page.

A click is the moment a person asked for a fresh MX URI. It also carries what came back: the
OAuth result the browser or the app reported (a claim, since those URLs are public) and, once
MX was read, whether the member really is connected again. The APP flow's signed ``state`` names
a click; ``state_used_at`` makes that state single-use.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, _utcnow


class Click(Base):
    __tablename__ = "clicks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    notification_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    episode: Mapped[int] = mapped_column(Integer)
    #: minted (a fresh URI was handed over) | closed (episode already over) | rate_limited |
    #: mx_error | refused (MX answered a URI that failed the link checks)
    outcome: Mapped[str] = mapped_column(String(16))
    referral_source: Mapped[str] = mapped_column(String(8), default="BROWSER")
    #: success | error, as reported by the popup or the APP redirect (not yet confirmed)
    reported: Mapped[str | None] = mapped_column(String(8))
    error_reason: Mapped[str | None] = mapped_column(String(32))
    state_used_at: Mapped[datetime | None]
    #: When MX confirmed the member connected again after this click.
    confirmed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)

    __table_args__ = (
        Index("ix_clicks_member_created", "member_id", "created_at"),
        # Retention (oldest first), and deleting a notification cascades to its clicks.
        Index("ix_clicks_created_at", "created_at"),
        Index("ix_clicks_notification_id", "notification_id"),
    )
