"""Operational tables: ``ops_actions`` (who ran what and why), ``scan_runs`` (what each scan did)
and ``locks`` (lease rows for singletons where PostgreSQL advisory locks are not available)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, _utcnow


class OpsAction(Base):
    __tablename__ = "ops_actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(128))
    command: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON)
    why: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow, index=True)


class ScanRun(Base):
    __tablename__ = "scan_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    claimed: Mapped[int] = mapped_column(Integer, default=0)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    skipped_lock: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Stopped by Ctrl-C or shutdown before it finished (its claims were released).
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Lock(Base):
    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime]
    #: Why the lock is held, for people (e.g. the configuration error that paused MX calls).
    note: Mapped[str | None] = mapped_column(Text)
