"""The ``attempts`` table: one row per MX call, the audit trail of what was sent and why."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, _utcnow


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    episode: Mapped[int] = mapped_column(Integer)
    reminder: Mapped[int] = mapped_column(Integer)
    #: scan | rerun | refresh (stale link regenerated before delivery)
    trigger: Mapped[str] = mapped_column(String(16), default="scan")
    reason: Mapped[str | None] = mapped_column(String(16))
    mx_api: Mapped[str] = mapped_column(String(16))
    referral_source: Mapped[str] = mapped_column(String(8))
    skip_aggregation: Mapped[bool] = mapped_column(Boolean)
    skip_aggregation_why: Mapped[str] = mapped_column(String(32))
    redirect_used: Mapped[bool] = mapped_column(Boolean, default=False)
    #: success | not_oauth_capable | member_not_found | bad_request | transient | configuration
    outcome: Mapped[str] = mapped_column(String(24))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_class: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)

    __table_args__ = (
        Index("ix_attempts_member_created", "member_id", "created_at"),
        # Retention deletes the oldest rows first, in batches (worker.store.retention).
        Index("ix_attempts_created_at", "created_at"),
    )
