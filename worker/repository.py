"""Members repository: claims, snapshots and the batch write. Never commits.

Claims are leases (``claim_owner``, ``claim_expires_at``): a worker that dies leaves rows that
become claimable again when the lease runs out. On PostgreSQL the claim is one statement using
``FOR UPDATE SKIP LOCKED``, so concurrent scans never wait on, or take, each other's rows. SQLite
has no row locks; there every unit of work starts with ``BEGIN IMMEDIATE`` (see worker/db.py),
which makes the database a single writer and the claim exclusive.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from models import Attempt, Lock, Member, Notification
from worker.policy import Channel, MemberSnapshot, Reason, ReauthFields, SkipWhy, State


def snapshot(m: Member) -> MemberSnapshot:
    """The policy's view of a member row."""
    return MemberSnapshot(
        member_guid=m.member_guid,
        is_oauth=m.is_oauth,
        connection_status=m.connection_status,
        oauth_status=m.oauth_status,
        oauth_error_reason=m.oauth_error_reason,
        oauth_started_at=m.oauth_started_at,
        successfully_aggregated_at=m.successfully_aggregated_at,
        is_being_aggregated=m.is_being_aggregated,
        channel=Channel(m.channel),
        state=State(m.reauth_state),
        reason=Reason(m.reauth_reason) if m.reauth_reason else None,
        episode=m.episode,
        episode_started_at=m.episode_started_at,
        reminders_sent=m.reminders_sent,
        attempts=m.attempts,
        next_attempt_at=m.next_attempt_at,
    )


def fields_to_columns(f: ReauthFields) -> dict[str, Any]:
    """Column values for :class:`ReauthFields` (the claim is released at the same time)."""
    return {
        "reauth_state": f.state.value,
        "reauth_reason": f.reason.value if f.reason else None,
        "episode": f.episode,
        "episode_started_at": f.episode_started_at,
        "reminders_sent": f.reminders_sent,
        "attempts": f.attempts,
        "next_attempt_at": f.next_attempt_at,
        "last_error": f.last_error,
        "claim_owner": None,
        "claim_expires_at": None,
    }


def after_clause(after: tuple[datetime, int]) -> Any:
    """Keyset position: a row-value comparison, so PostgreSQL seeks the index instead of
    OR-ing two ranges and sorting everything still due."""
    return tuple_(Member.next_attempt_at, Member.id) > tuple_(literal(after[0]), literal(after[1]))


def _due_clause(now: datetime) -> Any:
    return and_(
        Member.next_attempt_at.is_not(None),
        Member.next_attempt_at <= now,
        or_(Member.claim_expires_at.is_(None), Member.claim_expires_at < now),
    )


@dataclass(frozen=True)
class Page:
    """A claimed page of members and the keyset position after it."""

    ids: list[int]
    last: tuple[datetime, int] | None


def claim_due(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
    after: tuple[datetime, int] | None = None,
    member_ids: Sequence[int] | None = None,
) -> Page:
    """Claim up to ``limit`` due members in (next_attempt_at, id) order, after ``after``.

    With ``member_ids`` (an operator's rerun) those members are claimed whatever their due time,
    unless another worker holds a live claim on them.
    """
    if member_ids is not None:
        cond: Any = and_(
            Member.id.in_(member_ids),
            or_(Member.claim_expires_at.is_(None), Member.claim_expires_at < now),
        )
    else:
        cond = _due_clause(now)
        if after is not None:
            # Keyset pagination: the cost of a page does not grow with how deep the walk is.
            cond = and_(cond, after_clause(after))
    inner = select(Member.id).where(cond).order_by(Member.next_attempt_at, Member.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        inner = inner.with_for_update(skip_locked=True)
    stmt = (
        update(Member)
        .where(Member.id.in_(inner.scalar_subquery()))
        .values(claim_owner=owner, claim_expires_at=now + lease)
        .returning(Member.id, Member.next_attempt_at)
        .execution_options(synchronize_session=False)
    )
    rows = sorted(
        session.execute(stmt).all(),
        key=lambda r: (r.next_attempt_at is None, r.next_attempt_at, r.id),
    )
    ids = [r.id for r in rows]
    last = None
    dated = [r for r in rows if r.next_attempt_at is not None]
    if dated:
        last = (dated[-1].next_attempt_at, dated[-1].id)
    return Page(ids=ids, last=last)


def load_claimed(
    session: Session,
    ids: Sequence[int],
    owner: str,
    *,
    renew_until: datetime | None = None,
) -> list[Member]:
    """The members of ``ids`` still claimed by ``owner``, locked for this transaction.

    ``renew_until`` extends their lease: a batch that waited in the queue starts its work with a
    full lease rather than whatever the scan's claim had left.
    """
    stmt = select(Member).where(Member.id.in_(ids), Member.claim_owner == owner)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    members = list(session.scalars(stmt))
    if renew_until is not None:
        for m in members:
            m.claim_expires_at = renew_until
    return members


def still_claimed(session: Session, ids: Sequence[int], owner: str) -> set[int]:
    """Which of ``ids`` ``owner`` still holds, locked until the transaction ends (ids only:
    the write phase needs no second load of the rows)."""
    stmt = select(Member.id).where(Member.id.in_(ids), Member.claim_owner == owner)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return set(session.scalars(stmt))


def release_claims(session: Session, ids: Iterable[int], owner: str) -> int:
    """Give claims back without changing anything else (configuration errors, shutdown)."""
    result = session.execute(
        update(Member)
        .where(Member.id.in_(list(ids)), Member.claim_owner == owner)
        .values(claim_owner=None, claim_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def existing_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """Which idempotency keys already have an outbox row."""
    keys = list(keys)
    if not keys:
        return set()
    return set(
        session.scalars(
            select(Notification.idempotency_key).where(Notification.idempotency_key.in_(keys))
        )
    )


def insert_notifications(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert outbox rows; a row whose idempotency key exists is skipped, never duplicated."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    ins = pg_insert(Notification) if dialect == "postgresql" else sqlite_insert(Notification)
    stmt = ins.on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(Notification.id)
    # RETURNING yields only the rows actually inserted: skipped duplicates are not counted.
    return len(session.execute(stmt, rows).all())


def add_attempts(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(Attempt), rows)


def update_members(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk UPDATE by primary key (each dict carries ``id``)."""
    if rows:
        session.execute(update(Member), rows)


def by_guids(
    session: Session, guids: Sequence[str], *, for_update: bool = False
) -> dict[str, Member]:
    """Members by guid; ``for_update`` locks them (PostgreSQL) against a concurrent batch write."""
    stmt = select(Member).where(Member.member_guid.in_(guids))
    if for_update and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return {m.member_guid: m for m in session.scalars(stmt)}


def take_over(m: Member) -> None:
    """Revoke whatever claim a worker holds on ``m`` (an import or OAuth result changed it).

    The worker's batch then finds the claim gone when it writes, counts the member as
    ``lease_lost`` and leaves it alone, so it cannot overwrite the newer state with a decision
    taken on old data.
    """
    m.claim_owner = None
    m.claim_expires_at = None


def cancel_pending(session: Session, member_ids: Iterable[int], now: datetime) -> int:
    """Cancel undelivered notifications of members whose episode ended."""
    ids = list(member_ids)
    if not ids:
        return 0
    result = session.execute(
        update(Notification)
        .where(Notification.member_id.in_(ids), Notification.status == "pending")
        .values(status="canceled", last_error="episode ended before delivery", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


#: Name of the lock row that pauses all MX calls after a configuration error.
MX_PAUSE = "mx.paused"


def pause_mx(session: Session, *, until: datetime, why: str) -> None:
    """Stop every worker from calling MX until ``until`` (credentials or allow-list broken)."""
    row = session.get(Lock, MX_PAUSE)
    if row is None:
        session.add(Lock(name=MX_PAUSE, owner=why[:64], expires_at=until))
    else:
        row.owner = why[:64]
        row.expires_at = max(row.expires_at, until)


def mx_paused(session: Session, now: datetime) -> str | None:
    """Why MX calls are paused right now, or None."""
    row = session.get(Lock, MX_PAUSE)
    return row.owner if row is not None and row.expires_at > now else None


def due_count(session: Session, now: datetime) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Member).where(_due_clause(now))) or 0
    )


def new_owner() -> str:
    """A claim token: unique per batch, so a stale worker can never write over a new claim."""
    return uuid.uuid4().hex


def first_skip_why(session: Session, member_id: int, episode: int, reminder: int) -> SkipWhy:
    """The skip_aggregation reason recorded when a reminder's link was first generated."""
    why = session.scalar(
        select(Attempt.skip_aggregation_why)
        .where(
            Attempt.member_id == member_id,
            Attempt.episode == episode,
            Attempt.reminder == reminder,
            Attempt.outcome == "success",
        )
        .order_by(Attempt.id)
        .limit(1)
    )
    return SkipWhy(why) if why else SkipWhy.STALE_DATA
