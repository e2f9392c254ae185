"""The ``notifications`` table: the transactional outbox.

A row is written in the same transaction as the URI it carries; the relay delivers it and marks it
sent. ``idempotency_key`` (member guid, episode, reminder) is unique, so a redelivered task or a
rerun can never queue a second notification for the same reminder.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TimestampMixin


class Notification(TimestampMixin, Base):
    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: What the link was generated with (referral_source, skip_aggregation and why, redirect,
    #: url scheme), so a stale link is regenerated exactly as it was without re-deciding.
    link_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: pending | sent | dead | canceled (:class:`worker.core.states.NotificationStatus`)
    status: Mapped[str] = mapped_column(String(8), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claim_owner: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    #: When the purge replaced this sent row's ``oauth_window_uri`` by its fingerprint
    #: (``REAUTH_LINK_MAX_AGE`` after delivery): the link is a secret with a short life.
    link_cleared_at: Mapped[datetime | None]
    #: ``REAUTH_NOTIFY_GROUPING=user``: the message this row goes out in, set by the relay before
    #: the first delivery and kept for every retry, so a redelivered message lists the same rows
    #: under the same id (the consumer's dedupe key). The row's own id for a message of one;
    #: :func:`worker.core.grouping.group_id` of the member keys for a grouped one. NULL: not
    #: grouped yet (or ``member`` grouping).
    group_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    #: W3C ``traceparent`` of the span that produced the link (the member's MX call), when the
    #: writer traced: the relay's span links to it, so a member's path reaches its delivery even
    #: when that comes later in another trace (a sweep, the end of a grouping window).
    trace_parent: Mapped[str | None] = mapped_column(String(55))

    __table_args__ = (
        Index(
            "ix_notifications_pending",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_notifications_status", "status"),
        # Retention: the oldest rows of one terminal status first.
        Index("ix_notifications_status_created", "status", "created_at"),
        # Sent rows whose link is still stored: the purge clears them oldest first.
        Index(
            "ix_notifications_live_link",
            "sent_at",
            postgresql_where=text("status = 'sent' AND link_cleared_at IS NULL"),
            sqlite_where=text("status = 'sent' AND link_cleared_at IS NULL"),
        ),
    )
