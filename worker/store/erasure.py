"""Erasure (``reauth forget``): every row that names a member, found and removed. Never commits.

Rows that name a member: the member itself, its attempts, its outbox rows (payloads carry its
guids), its clicks, its funnel events and episode summaries; and, in ``ops_actions``, the
arguments, result or reason of earlier operator actions (those rows are kept as audit, with the
guids replaced). Deletes are explicit rather than left to ``ON DELETE CASCADE``, so each is
counted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Text, cast, delete, func, or_, select
from sqlalchemy.orm import Session

from models import Attempt, Click, Episode, FunnelEvent, Member, Notification, OpsAction
from worker.core.erasure import redact
from worker.core.states import NotificationStatus as NS


def members_of(
    session: Session, *, user_guid: str | None = None, member_guid: str | None = None
) -> list[Member]:
    """The members of one user, or the one member, locked against concurrent writers."""
    stmt = select(Member).order_by(Member.id).with_for_update()
    if user_guid is not None:
        stmt = stmt.where(Member.user_guid == user_guid)
    else:
        stmt = stmt.where(Member.member_guid == member_guid)
    return list(session.scalars(stmt))


def _delete(session: Session, stmt: Any) -> int:
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def delete_members(session: Session, ids: Sequence[int]) -> dict[str, int]:
    """Delete the members of ``ids`` and every row that hangs on them; counts per kind."""
    if not ids:
        return {
            "members": 0, "attempts": 0, "notifications": 0, "pending_canceled": 0, "clicks": 0,
            "funnel_events": 0, "episodes": 0,
        }  # fmt: skip
    N = Notification
    pending = int(
        session.scalar(
            select(func.count()).select_from(N).where(N.member_id.in_(ids), N.status == NS.PENDING)
        )
        or 0
    )
    counts = {
        "clicks": _delete(session, delete(Click).where(Click.member_id.in_(ids))),
        "attempts": _delete(session, delete(Attempt).where(Attempt.member_id.in_(ids))),
        "notifications": _delete(session, delete(N).where(N.member_id.in_(ids))),
        "pending_canceled": pending,
        "funnel_events": _delete(
            session, delete(FunnelEvent).where(FunnelEvent.member_id.in_(ids))
        ),
        "episodes": _delete(session, delete(Episode).where(Episode.member_id.in_(ids))),
    }
    counts["members"] = _delete(session, delete(Member).where(Member.id.in_(ids)))
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Member) and obj.id in ids:
            session.expunge(obj)
    return counts


def redact_actions(session: Session, names: Mapping[str, str]) -> int:
    """Replace each key of ``names`` by its value in ``ops_actions`` rows that contain it."""
    if not names:
        return 0
    ops = OpsAction
    match = [
        cond
        for name in names
        for cond in (
            cast(ops.arguments, Text).contains(name, autoescape=True),
            cast(ops.result, Text).contains(name, autoescape=True),
            ops.why.contains(name, autoescape=True),
        )
    ]
    rows = list(session.scalars(select(ops).where(or_(*match))))
    for row in rows:
        row.arguments = redact(row.arguments, names)
        row.result = redact(row.result, names)
        row.why = redact(row.why, names)
    session.flush()
    return len(rows)


def forget_recorded(session: Session, digest: str) -> bool:
    """Whether an earlier ``forget`` of the guid with this digest was recorded."""
    rows = session.scalars(
        select(OpsAction.arguments).where(
            OpsAction.command == "forget",
            cast(OpsAction.arguments, Text).contains(digest, autoescape=True),
        )
    )
    return any((args or {}).get("guid_sha256") == digest for args in rows)
