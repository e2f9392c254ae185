"""The ``webhook_events`` table: MX webhooks as received (the inbox).

Every POST that passed authentication is a row before it is answered, so nothing MX was told we
accepted can be lost. ``status``: ``pending`` (to apply), ``applied``, ``ignored`` (nothing to
do), ``rejected`` (not JSON or missing fields: kept with the reason, never applied) or
``failed`` (MX could not be read after every retry). ``digest`` (SHA-256 of the type and the
raw body) finds duplicates within REAUTH_MX_WEBHOOK_DEDUPE_WINDOW: MX sends no event id. The
apply job claims rows with the lease columns, like members and outbox rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, _utcnow


class WebhookEvent(Base):
    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: CONNECTION_STATUS | MEMBER | AGGREGATION | whatever MX sent (unknown types are ignored)
    event_type: Mapped[str] = mapped_column(String(32))
    action: Mapped[str | None] = mapped_column(String(32))
    member_guid: Mapped[str | None] = mapped_column(String(64))
    user_guid: Mapped[str | None] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))
    #: The body exactly as received (at most 64 KiB).
    body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    #: Why it was rejected, ignored or failed; what applying it did.
    note: Mapped[str | None] = mapped_column(String(200))
    #: Identical bodies received again within the window (not stored again).
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(default=_utcnow)
    applied_at: Mapped[datetime | None]
    claim_owner: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None]

    __table_args__ = (
        # Duplicates: the same digest received since now - window.
        Index("ix_webhook_events_digest", "digest", "received_at"),
        # The apply job's queue: pending rows, oldest first.
        Index(
            "ix_webhook_events_pending",
            "received_at",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # Listing and retention.
        Index("ix_webhook_events_received_at", "received_at"),
    )
