"""The ``attempts`` table: one row per MX call, the per-member record of what was asked and
what MX answered. Never commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from models import Attempt

_ATTEMPTS = cast(Table, Attempt.__table__)  # a mapped class's table


def add(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        # The table, not the mapped class: a Core INSERT skips the ORM's bulk-insert machinery
        # (nothing reads the rows back in the unit of work).
        session.execute(insert(_ATTEMPTS), rows)


def for_member(session: Session, member_id: int) -> list[Attempt]:
    return list(session.scalars(select(Attempt).where(Attempt.member_id == member_id)))


def since(session: Session, at: datetime) -> list[Attempt]:
    """Attempts made at or after ``at``, in order (the demo's report)."""
    return list(
        session.scalars(select(Attempt).where(Attempt.created_at >= at).order_by(Attempt.id))
    )
