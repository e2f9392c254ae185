"""The ``attempts`` table: one row per MX call, the per-member record of what was asked and
what MX answered. Never commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Attempt
from worker.store import bulk


def add(session: Session, rows: list[dict[str, Any]]) -> None:
    """One statement per batch on PostgreSQL (:mod:`worker.store.bulk`), not one per member."""
    bulk.insert_rows(session, Attempt, rows)


def for_member(session: Session, member_id: int) -> list[Attempt]:
    return list(session.scalars(select(Attempt).where(Attempt.member_id == member_id)))


def since(session: Session, at: datetime) -> list[Attempt]:
    """Attempts made at or after ``at``, in order (the demo's report)."""
    return list(
        session.scalars(select(Attempt).where(Attempt.created_at >= at).order_by(Attempt.id))
    )
