"""The webhook inbox (``webhook_events``): intake, claims for the apply job, on-call views.

Never commits. Duplicates: MX sends no event id, so an event is the same as another when the
SHA-256 of its type and raw body is; one received within the dedupe window is not stored again,
only counted on the first row. On PostgreSQL the check and the insert hold a transaction-level
advisory lock on each digest, so two identical POSTs racing each other (in two batches, or two
`reauth serve` processes) store one row; SQLite's ``BEGIN IMMEDIATE`` already makes every unit
of work the one writer. :func:`add_many` stores a whole group-committed batch in three
statements.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from models import WebhookEvent
from worker.store import leases

PENDING = "pending"
APPLIED = "applied"
IGNORED = "ignored"
REJECTED = "rejected"
FAILED = "failed"
STATUSES = (PENDING, APPLIED, IGNORED, REJECTED, FAILED)
#: Columns of a note (longer text is cut).
NOTE_MAX = 200


def digest(event_type: str, body: bytes) -> str:
    """The duplicate key: SHA-256 of the type and the raw body."""
    return hashlib.sha256(event_type.encode("utf-8", "replace") + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class Stored:
    """What the intake did with one POST."""

    id: int
    duplicate: bool


def _lock_digests(session: Session, keys: Sequence[str]) -> None:
    """PostgreSQL: a transaction-level advisory lock per digest, taken in one order (no
    deadlock between two batches), held until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql" and keys:
        # A signed 64-bit key from each digest.
        locks = sorted({int(k[:16], 16) - (1 << 63) for k in keys})
        session.execute(
            text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ks AS bigint[])) AS k"),
            {"ks": locks},
        )


@dataclass(frozen=True)
class NewEvent:
    """One received body to store (see :func:`add_many`)."""

    event_type: str
    body: bytes
    status: str = PENDING
    note: str | None = None
    action: str | None = None
    member_guid: str | None = None
    user_guid: str | None = None


def add(
    session: Session,
    *,
    event_type: str,
    body: bytes,
    now: datetime,
    window: timedelta,
    status: str = PENDING,
    note: str | None = None,
    action: str | None = None,
    member_guid: str | None = None,
    user_guid: str | None = None,
) -> Stored:
    """Store one received event, or count it on the row it duplicates (same digest within
    ``window``)."""
    event = NewEvent(event_type, body, status, note, action, member_guid, user_guid)
    return add_many(session, [event], now=now, window=window)[0]


def add_many(
    session: Session, events: Sequence[NewEvent], *, now: datetime, window: timedelta
) -> list[Stored]:
    """Store received events in one go (the intake's group commit), in order; each one that
    duplicates a stored row (same digest within ``window``) or an earlier one of the same call
    is counted on that row instead. Three statements whatever the count: the digests' first
    rows, one multi-row INSERT, one UPDATE per distinct duplicate count."""
    keys = [digest(e.event_type, e.body) for e in events]
    _lock_digests(session, keys)
    first: dict[str, int] = {}
    for row_id, key in session.execute(
        select(WebhookEvent.id, WebhookEvent.digest)
        .where(WebhookEvent.digest.in_(set(keys)), WebhookEvent.received_at > now - window)
        .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
    ):
        first[key] = row_id  # the oldest row in the window wins (read last)
    fresh: dict[str, int] = {}  # digest -> index of the event that is stored
    rows: list[dict[str, Any]] = []
    for i, (e, key) in enumerate(zip(events, keys, strict=True)):
        if key in first or key in fresh:
            continue
        fresh[key] = i
        rows.append(
            {
                "event_type": e.event_type[:32],
                "action": e.action[:32] if e.action else None,
                "member_guid": e.member_guid[:64] if e.member_guid else None,
                "user_guid": e.user_guid[:64] if e.user_guid else None,
                "digest": key,
                "body": e.body,
                "status": e.status,
                "note": e.note[:NOTE_MAX] if e.note else None,
                "duplicates": 0,
                "attempts": 0,
                "received_at": now,
            }
        )
    if rows:
        inserted = session.execute(
            insert(WebhookEvent).returning(
                WebhookEvent.id, WebhookEvent.digest, sort_by_parameter_order=True
            ),
            rows,
        ).all()
        first.update({key: row_id for row_id, key in inserted})
    counts: Counter[str] = Counter(key for i, key in enumerate(keys) if fresh.get(key) != i)
    by_count: dict[int, list[int]] = {}
    for key, n in counts.items():
        by_count.setdefault(n, []).append(first[key])
    for n, ids in by_count.items():
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id.in_(ids))
            .values(duplicates=WebhookEvent.duplicates + n)
            .execution_options(synchronize_session=False)
        )
    return [Stored(first[key], fresh.get(key) != i) for i, key in enumerate(keys)]


# --- the apply job --------------------------------------------------------------------------------


def claim_pending(
    session: Session, *, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[WebhookEvent]:
    """Lease up to ``limit`` pending events (oldest first) to ``owner`` and load them."""
    rows = leases.claim(
        session,
        WebhookEvent,
        where=(WebhookEvent.status == PENDING) & leases.is_free(WebhookEvent, now),
        order_by=(WebhookEvent.received_at, WebhookEvent.id),
        owner=owner,
        until=now + lease,
        limit=limit,
        returning=(WebhookEvent.id,),
    )
    ids = [r.id for r in rows]
    if not ids:
        return []
    stmt = select(WebhookEvent).where(WebhookEvent.id.in_(ids), WebhookEvent.claim_owner == owner)
    return sorted(
        session.scalars(stmt.execution_options(populate_existing=True)),
        key=lambda e: (e.received_at, e.id),
    )


def held(session: Session, ids: Sequence[int], owner: str) -> set[int]:
    """Which of ``ids`` ``owner`` still holds, locked for this transaction (PostgreSQL)."""
    return leases.held(session, WebhookEvent, ids, owner)


def finish(
    session: Session, ids: Sequence[int], owner: str, *, status: str, note: str | None,
    now: datetime,
) -> int:  # fmt: skip
    """Release ``owner``'s events with their outcome."""
    return leases.release(
        session, WebhookEvent, ids, owner,
        status=status, note=note[:NOTE_MAX] if note else None, applied_at=now,
    )  # fmt: skip


def retry_later(
    session: Session, ids: Sequence[int], owner: str, *, until: datetime, note: str
) -> int:
    """Give events back as pending, claimable again from ``until`` (an MX outage)."""
    ids = list(ids)
    if not ids:
        return 0
    result = session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id.in_(ids), WebhookEvent.claim_owner == owner)
        .values(
            claim_owner=None, claim_expires_at=until, note=note[:NOTE_MAX],
            attempts=WebhookEvent.attempts + 1,
        )
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def pending_count(session: Session, now: datetime) -> int:
    """Pending events claimable now (the sweeper's check)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(WebhookEvent)
            .where(WebhookEvent.status == PENDING, leases.is_free(WebhookEvent, now))
        )
        or 0
    )


# --- on-call views --------------------------------------------------------------------------------


def recent(
    session: Session,
    *,
    limit: int,
    status: str | None = None,
    event_type: str | None = None,
    member_guid: str | None = None,
) -> list[WebhookEvent]:
    """The newest events first, optionally filtered."""
    stmt = select(WebhookEvent)
    if status:
        stmt = stmt.where(WebhookEvent.status == status)
    if event_type:
        stmt = stmt.where(WebhookEvent.event_type == event_type)
    if member_guid:
        stmt = stmt.where(WebhookEvent.member_guid == member_guid)
    order = (WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
    return list(session.scalars(stmt.order_by(*order).limit(limit)))


def replay(
    session: Session,
    *,
    ids: Sequence[int] | None = None,
    status: str | None = None,
    since: datetime | None = None,
) -> int:
    """Make events pending again (never rejected ones: they cannot be applied)."""
    stmt = update(WebhookEvent).where(WebhookEvent.status != REJECTED)
    if ids is not None:
        stmt = stmt.where(WebhookEvent.id.in_(ids))
    if status:
        stmt = stmt.where(WebhookEvent.status == status)
    if since is not None:
        stmt = stmt.where(WebhookEvent.received_at >= since)
    result = session.execute(
        stmt.values(
            status=PENDING, claim_owner=None, claim_expires_at=None, attempts=0, applied_at=None
        ).execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def stats(session: Session, *, since: datetime) -> dict[str, Any]:
    """Counts by type and status received since ``since``, duplicates, the oldest pending."""
    by: dict[str, dict[str, int]] = {}
    dupes = 0
    for event_type, status, n, d in session.execute(
        select(
            WebhookEvent.event_type,
            WebhookEvent.status,
            func.count(),
            func.coalesce(func.sum(WebhookEvent.duplicates), 0),
        )
        .where(WebhookEvent.received_at >= since)
        .group_by(WebhookEvent.event_type, WebhookEvent.status)
    ):
        by.setdefault(event_type, {})[status] = int(n)
        dupes += int(d)
    oldest = session.scalar(
        select(func.min(WebhookEvent.received_at)).where(WebhookEvent.status == PENDING)
    )
    return {"by_type": by, "duplicates": dupes, "oldest_pending": oldest}


def forget(session: Session, *, member_guids: Sequence[str], user_guid: str | None) -> int:
    """Delete the events naming these members (or this user): erasure (``reauth forget``)."""
    cond: ColumnElement[bool] = WebhookEvent.member_guid.in_(list(member_guids))
    if user_guid is not None:
        cond = cond | (WebhookEvent.user_guid == user_guid)
    result = session.execute(
        delete(WebhookEvent).where(cond).execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
