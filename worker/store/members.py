"""The ``members`` table: snapshots for the policy, claims, due pages, imports. Never commits.

Claims go through :mod:`worker.store.leases`; the episode-ending write goes through
:mod:`worker.store.decisions`. Pages are walked in (next_attempt_at, id) keyset order, which the
partial covering index ``ix_members_due`` serves on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import ColumnElement, Table, and_, case, func, literal, select, tuple_, update
from sqlalchemy.orm import Session

from models import Member
from worker.core.policy import Channel, MemberSnapshot, Reason, ReauthFields, State
from worker.store import bulk, leases

#: MX fields an import (or, later, a webhook) may set; a change to any makes the member due.
MX_FIELDS = (
    "user_guid",
    "user_id",
    "institution_code",
    "is_oauth",
    "connection_status",
    "oauth_status",
    "oauth_error_reason",
    "oauth_started_at",
    "successfully_aggregated_at",
    "is_being_aggregated",
    "channel",
)


class MemberView(Protocol):
    """What the regenerate step reads of a member: a :class:`Member` or a Core row of its
    columns (:func:`load_claimed`, no ORM object per member on the hot path)."""

    @property
    def id(self) -> int: ...
    @property
    def member_guid(self) -> str: ...
    @property
    def user_guid(self) -> str: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def institution_code(self) -> str: ...
    @property
    def is_oauth(self) -> bool: ...
    @property
    def connection_status(self) -> str | None: ...
    @property
    def oauth_status(self) -> str | None: ...
    @property
    def oauth_error_reason(self) -> str | None: ...
    @property
    def oauth_started_at(self) -> datetime | None: ...
    @property
    def successfully_aggregated_at(self) -> datetime | None: ...
    @property
    def is_being_aggregated(self) -> bool: ...
    @property
    def channel(self) -> str: ...
    @property
    def reauth_state(self) -> str: ...
    @property
    def reauth_reason(self) -> str | None: ...
    @property
    def episode(self) -> int: ...
    @property
    def episode_started_at(self) -> datetime | None: ...
    @property
    def reminders_sent(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def next_attempt_at(self) -> datetime | None: ...


def snapshot(m: MemberView) -> MemberSnapshot:
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


def fields_to_columns(f: ReauthFields, *, keep_last_error: bool = False) -> dict[str, Any]:
    """Column values for :class:`ReauthFields`; the claim is released at the same time.

    ``keep_last_error``: a decision taken without an MX call leaves the last error as it was.
    """
    columns: dict[str, Any] = {
        "reauth_state": f.state.value,
        "reauth_reason": f.reason.value if f.reason else None,
        "episode": f.episode,
        "episode_started_at": f.episode_started_at,
        "reminders_sent": f.reminders_sent,
        "attempts": f.attempts,
        "next_attempt_at": f.next_attempt_at,
        "claim_owner": None,
        "claim_expires_at": None,
    }
    if not keep_last_error:
        columns["last_error"] = f.last_error
    return columns


# --- due pages and claims -------------------------------------------------------------------------


def after_clause(after: tuple[datetime, int]) -> ColumnElement[bool]:
    """Keyset position: a row-value comparison, so PostgreSQL seeks the index instead of
    OR-ing two ranges and sorting everything still due."""
    return tuple_(Member.next_attempt_at, Member.id) > tuple_(literal(after[0]), literal(after[1]))


def due_clause(now: datetime) -> ColumnElement[bool]:
    return and_(
        Member.next_attempt_at.is_not(None),
        Member.next_attempt_at <= now,
        leases.is_free(Member, now),
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
        cond: ColumnElement[bool] = and_(Member.id.in_(member_ids), leases.is_free(Member, now))
    else:
        cond = due_clause(now)
        if after is not None:
            # Keyset pagination: the cost of a page does not grow with how deep the walk is.
            cond = and_(cond, after_clause(after))
    rows = sorted(
        leases.claim(
            session,
            Member,
            where=cond,
            order_by=(Member.next_attempt_at, Member.id),
            owner=owner,
            until=now + lease,
            limit=limit,
            returning=(Member.id, Member.next_attempt_at),
        ),
        key=lambda r: (r.next_attempt_at is None, r.next_attempt_at, r.id),
    )
    dated = [r for r in rows if r.next_attempt_at is not None]
    last = (dated[-1].next_attempt_at, dated[-1].id) if dated else None
    return Page(ids=[r.id for r in rows], last=last)


def due_page(
    session: Session, *, now: datetime, limit: int, after: tuple[datetime, int] | None = None
) -> list[Member]:
    """Read (without claiming) a keyset page of due members."""
    stmt = select(Member).where(due_clause(now))
    if after is not None:
        stmt = stmt.where(after_clause(after))
    return list(session.scalars(stmt.order_by(Member.next_attempt_at, Member.id).limit(limit)))


def has_expired_claims(session: Session, now: datetime) -> bool:
    """Is any due member claimed by a lease that ran out (its worker died)? The sweeper's check.

    Releases clear both lease columns, so a past ``claim_expires_at`` is an expired claim; the
    due index carries that column.
    """
    stmt = (
        select(Member.id)
        .where(
            Member.next_attempt_at.is_not(None),
            Member.next_attempt_at <= now,
            Member.claim_expires_at <= now,
        )
        .limit(1)
    )
    return session.scalar(stmt) is not None


def count_in_state(session: Session, state: str) -> int:
    """Members in ``state`` (on the reauth_state index)."""
    return int(
        session.scalar(select(func.count()).select_from(Member).where(Member.reauth_state == state))
        or 0
    )


def due_count(session: Session, now: datetime) -> int:
    return int(session.scalar(select(func.count()).select_from(Member).where(due_clause(now))) or 0)


def load_claimed(
    session: Session, ids: Sequence[int], owner: str, *, renew_until: datetime | None = None
) -> list[MemberView]:
    """The members of ``ids`` still claimed by ``owner``, locked for this transaction, as rows
    (read-only: they change through :mod:`worker.store.decisions`).

    ``renew_until`` extends their lease: a batch that waited in the queue starts its work with a
    full lease rather than whatever the scan's claim had left.
    """
    table = cast(Table, Member.__table__)
    mine = (bulk.one_of(session, table.c.id, ids), table.c.claim_owner == owner)
    if renew_until is None:
        return cast(
            list[MemberView], session.execute(select(table).where(*mine).with_for_update()).all()
        )
    # One statement: the UPDATE locks the rows as FOR UPDATE would and RETURNING loads them,
    # instead of a locking select plus a flush of one changed attribute per member. Core rows,
    # not ORM objects: building a Member (identity map, instance state) per row cost more
    # than everything the batch then reads of it.
    stmt = update(table).where(*mine).values(claim_expires_at=renew_until).returning(table)
    return cast(list[MemberView], session.execute(stmt).all())


def still_claimed(session: Session, ids: Sequence[int], owner: str) -> set[int]:
    """Which of ``ids`` ``owner`` still holds (ids only: the write phase needs no reload)."""
    return leases.held(session, Member, ids, owner)


def release_claims(session: Session, ids: Iterable[int], owner: str) -> int:
    """Give claims back without changing anything else (configuration errors, shutdown)."""
    return leases.release(session, Member, ids, owner)


def renew_claims(session: Session, ids: Iterable[int], owner: str, *, until: datetime) -> int:
    """Heartbeat: keep a live batch's members claimed."""
    return leases.renew(session, Member, ids, owner, until=until)


def update_members(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk UPDATE by primary key (each dict carries ``id``): one statement per column set."""
    bulk.update_by_id(session, Member, rows)


# --- lookups ------------------------------------------------------------------------------------


def by_guids(
    session: Session, guids: Sequence[str], *, for_update: bool = False
) -> dict[str, Member]:
    """Members by guid; ``for_update`` locks them (PostgreSQL) against a concurrent batch write,
    in id order (two writers locking several members take them in the same order)."""
    stmt = select(Member).where(Member.member_guid.in_(guids))
    if for_update:
        stmt = stmt.order_by(Member.id).with_for_update()
    return {m.member_guid: m for m in session.scalars(stmt)}


def oauth_members(session: Session, *, institution: str | None = None) -> Iterator[Member]:
    """Every OAuth member (optionally of one institution), streamed."""
    stmt = select(Member).where(Member.is_oauth.is_(True))
    if institution:
        stmt = stmt.where(Member.institution_code == institution)
    yield from session.scalars(stmt.execution_options(yield_per=1000))


def ids_by_guids(session: Session, guids: Sequence[str]) -> dict[str, int]:
    return dict(
        session.execute(select(Member.member_guid, Member.id).where(Member.member_guid.in_(guids)))
    )


def counts_by_state(session: Session) -> dict[tuple[str, str | None], int]:
    """Members per (state, reason)."""
    return {
        (state, reason): n
        for state, reason, n in session.execute(
            select(Member.reauth_state, Member.reauth_reason, func.count())
            .group_by(Member.reauth_state, Member.reauth_reason)
            .order_by(Member.reauth_state, Member.reauth_reason)
        )
    }


# --- writes from MX facts -----------------------------------------------------------------------


def add_new(session: Session, values: Mapping[str, Any], *, now: datetime) -> Member:
    """A member seen for the first time: idle, due now so the next scan looks at it."""
    m = Member(**values, next_attempt_at=now, reauth_state=State.IDLE.value)
    session.add(m)
    return m


def set_mx_fields(m: Member, values: Mapping[str, Any]) -> bool:
    """Copy the MX fields of ``values`` onto ``m``; False when nothing changed."""
    if all(getattr(m, k) == values[k] for k in MX_FIELDS if k in values):
        return False
    for k in MX_FIELDS:
        if k in values:
            setattr(m, k, values[k])
    return True


def take_over(m: Member) -> None:
    """Revoke whatever claim a worker holds on ``m`` (newer MX facts arrived).

    The worker's batch then finds the claim gone when it writes, counts the member as
    ``lease_lost`` and leaves it alone, so it cannot overwrite the newer state with a decision
    taken on old data.
    """
    m.claim_owner = None
    m.claim_expires_at = None


def make_due(m: Member, now: datetime) -> None:
    """Look at ``m`` again at the next scan, whoever held it (the claim is revoked)."""
    take_over(m)
    m.next_attempt_at = now


def store_uri(session: Session, member_id: int, uri: str, generated_at: datetime) -> None:
    """Keep the member's latest link (a refreshed one) next to its state."""
    session.execute(
        update(Member)
        .where(Member.id == member_id)
        .values(oauth_window_uri=uri, uri_generated_at=generated_at)
        .execution_options(synchronize_session=False)
    )


def postpone(session: Session, member_id: int, until: datetime) -> None:
    """Hold the member's next reminder back until ``until`` (a reported success awaits MX's
    confirmation); never brings it forward."""
    session.execute(
        update(Member)
        .where(Member.id == member_id, Member.next_attempt_at.is_not(None))
        .values(
            next_attempt_at=case(
                (Member.next_attempt_at < until, literal(until)), else_=Member.next_attempt_at
            )
        )
        .execution_options(synchronize_session=False)
    )
