"""The ``notifications`` table (the transactional outbox): insert, claim, mark, cancel, list.

Rows are written in the same transaction as the URI they carry (:func:`insert`, idempotent on
the unique ``idempotency_key``), leased to one relay at a time (:mod:`worker.store.leases`) and
marked sent, retried or dead. Never commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from models import Member, Notification
from worker.core.contract import link_is_stale
from worker.core.states import NotificationStatus as NS
from worker.store import bulk, funnel, leases

N = Notification


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox row leased to a relay: what it needs to deliver it.

    The last four are filled by :func:`claim_due_groups` (``user`` grouping) only.
    """

    id: uuid.UUID
    payload: dict[str, Any]
    attempts: int
    created_at: datetime | None = None
    idempotency_key: str = ""
    user_guid: str = ""
    group_id: uuid.UUID | None = None
    #: The writer's span (W3C traceparent) when it traced, for the relay's span to link to.
    trace_parent: str | None = None


@dataclass(frozen=True, slots=True)
class StaleLink:
    """A pending row whose link must be regenerated before delivery, with its member."""

    id: uuid.UUID
    payload: dict[str, Any]
    link_params: dict[str, Any] | None
    member: Member


def existing_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """Which idempotency keys already have an outbox row."""
    keys = list(keys)
    if not keys:
        return set()
    return set(
        session.scalars(
            select(N.idempotency_key).where(bulk.one_of(session, N.idempotency_key, keys))
        )
    )


def insert(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert outbox rows; a row whose idempotency key exists is skipped, never duplicated."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # One statement with the rows as one JSON parameter (worker.store.bulk): the
        # multi-row VALUES insertmanyvalues built was parsed by psycopg on every batch.
        return bulk.insert_new(session, N, rows, ("idempotency_key",))
    ins = sqlite_insert(N)
    stmt = ins.on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(N.id)
    # RETURNING yields only the rows actually inserted: skipped duplicates are not counted.
    return len(session.execute(stmt, rows).all())


def cancel_pending(session: Session, member_ids: Iterable[int], now: datetime) -> int:
    """Cancel undelivered notifications of members whose episode ended."""
    ids = list(member_ids)
    if not ids:
        return 0
    result = session.execute(
        update(N)
        .where(bulk.one_of(session, N.member_id, ids), N.status == NS.PENDING)
        .values(
            status=NS.CANCELED,
            last_error="episode ended before delivery",
            updated_at=now,
            claim_owner=None,
            claim_expires_at=None,
            next_attempt_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- the relay ---------------------------------------------------------------------------------


def _due(now: datetime) -> Any:
    return and_(
        N.status == NS.PENDING,
        or_(N.next_attempt_at.is_(None), N.next_attempt_at <= now),
        leases.is_free(N, now),
    )


def claim_due(
    session: Session, *, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[Claimed]:
    """Lease up to ``limit`` due pending rows, oldest first."""
    rows = leases.claim(
        session,
        N,
        where=_due(now),
        order_by=(N.created_at, N.id),
        owner=owner,
        until=now + lease,
        limit=limit,
        returning=(N.id, N.payload, N.attempts, N.created_at, N.trace_parent),
    )
    # RETURNING has no order; deliver oldest first like the claim chose them.
    ordered = sorted(rows, key=lambda row: (row.created_at, str(row.id)))
    return [
        Claimed(row.id, dict(row.payload), row.attempts, trace_parent=row.trace_parent)
        for row in ordered
    ]


def claim_due_groups(
    session: Session,
    *,
    now: datetime,
    owner: str,
    lease: timedelta,
    limit: int,
    cutoff: datetime,
) -> list[Claimed]:
    """``user`` grouping: lease whole groups of due rows, oldest first, until ``limit`` rows are
    reached (the last group may go over it: a group is never split). :mod:`worker.core.grouping`
    has the rules.

    1. Rows already in a group (a retry, or a redelivery after a crash) are taken a whole group
       at a time, once every pending row of the group is due and free, so a group never goes
       out with part of its rows under its id.
    2. Rows not in a group yet are taken a whole user at a time, once the user's earliest due
       one became due at or before ``cutoff`` (now minus the grouping window); until then they
       are held.

    Both read the pending rows (a small set: the outbox drains within seconds) and join
    ``members`` by its primary key for the user.
    """
    until = now + lease
    returning = (
        N.id, N.payload, N.attempts, N.created_at, N.idempotency_key, N.group_id, N.trace_parent,
    )  # fmt: skip
    due_flag = case((_due(now), 1), else_=0)
    ready_groups = session.execute(
        select(N.group_id, func.count().label("n"))
        .where(N.status == NS.PENDING, N.group_id.is_not(None))
        .group_by(N.group_id)
        .having(func.min(due_flag) == 1)
        .order_by(func.min(N.created_at), N.group_id)
        .limit(limit)
    ).all()
    sizes = _within(ready_groups, limit)
    taken = list(
        leases.claim(
            session,
            N,
            where=and_(N.group_id.in_(list(sizes)), _due(now)),
            order_by=(N.created_at, N.id),
            owner=owner,
            until=until,
            limit=sum(sizes.values()),
            returning=returning,
        )
        if sizes
        else []
    )
    # A row canceled or claimed by another relay between the two statements: the group is not
    # whole; give back what we took and leave it for the next pass.
    count: dict[Any, int] = {}
    for row in taken:
        count[row.group_id] = count.get(row.group_id, 0) + 1
    partial = {gid for gid, n in sizes.items() if count.get(gid, 0) != n}
    if partial:
        release(session, [row.id for row in taken if row.group_id in partial], owner)
        taken = [row for row in taken if row.group_id not in partial]

    budget = limit - len(taken)
    if budget > 0:
        ready_users = session.execute(
            select(Member.user_guid, func.count().label("n"))
            .select_from(N)
            .join(Member, Member.id == N.member_id)
            .where(_due(now), N.group_id.is_(None))
            .group_by(Member.user_guid)
            .having(func.min(N.created_at) <= cutoff)
            .order_by(func.min(N.created_at), Member.user_guid)
            .limit(budget)
        ).all()
        users = _within(ready_users, budget)
        if users:
            taken += leases.claim(
                session,
                N,
                where=and_(
                    _due(now),
                    N.group_id.is_(None),
                    N.member_id.in_(select(Member.id).where(Member.user_guid.in_(list(users)))),
                ),
                order_by=(N.created_at, N.id),
                owner=owner,
                until=until,
                limit=sum(users.values()),
                returning=returning,
            )
    if not taken:
        return []
    user_of = dict(
        session.execute(
            select(N.id, Member.user_guid)
            .join(Member, Member.id == N.member_id)
            .where(N.id.in_([row.id for row in taken]))
        ).all()
    )
    ordered = sorted(taken, key=lambda row: (row.created_at, str(row.id)))
    return [
        Claimed(
            row.id,
            dict(row.payload),
            row.attempts,
            created_at=row.created_at,
            idempotency_key=row.idempotency_key,
            user_guid=user_of[row.id],
            group_id=row.group_id,
            trace_parent=row.trace_parent,
        )
        for row in ordered
    ]


def _within(counted: Sequence[Any], limit: int) -> dict[Any, int]:
    """The leading (key, row count) pairs until ``limit`` rows are reached: the last may go
    over it, since a group is never split. A full batch therefore claims at least ``limit``
    rows, which is how the delivery loop knows to go on draining."""
    chosen: dict[Any, int] = {}
    total = 0
    for key, n in counted:
        if total >= limit:
            break
        chosen[key] = n
        total += n
    return chosen


def assign_groups(
    session: Session, groups: Mapping[uuid.UUID, Sequence[uuid.UUID]], owner: str
) -> set[uuid.UUID]:
    """Store newly formed groups' ids (group id → its row ids) on the rows ``owner`` still holds,
    before their first delivery; returns those rows. A row canceled meanwhile is not in its
    group.

    One statement on PostgreSQL (:mod:`worker.store.bulk`: the rows as one JSON parameter,
    RETURNING the rows written); elsewhere one executemany and one read.
    """
    params = [
        {"row_id": rid, "new_group": gid, "owner": owner}
        for gid, rids in groups.items()
        for rid in rids
    ]
    if not params:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        rows = [{"id": p["row_id"], "group_id": p["new_group"]} for p in params]
        only = {"claim_owner": owner, "status": NS.PENDING.value}
        return set(bulk.update_where(session, Notification, rows, only))
    table = cast(Table, Notification.__table__)  # a mapped class's table
    session.execute(
        update(table)
        .where(
            table.c.id == bindparam("row_id"),
            table.c.claim_owner == bindparam("owner"),
            table.c.status == NS.PENDING,
        )
        .values(group_id=bindparam("new_group")),
        params,
    )
    # Rows ``owner`` holds had no group when claimed, and nobody else writes one meanwhile.
    return set(
        session.scalars(
            select(N.id).where(
                N.id.in_([p["row_id"] for p in params]),
                N.claim_owner == owner,
                N.status == NS.PENDING,
                N.group_id.is_not(None),
            )
        )
    )


_URI = N.payload["oauth_window_uri"].as_string()
_GENERATED_AT = N.payload["generated_at"].as_string()


def claim_stale(
    session: Session,
    *,
    now: datetime,
    max_age: timedelta,
    owner: str,
    lease: timedelta,
    limit: int,
) -> list[StaleLink]:
    """Lease pending rows whose link is older than ``max_age``, with their members.

    Rows carry their link's age in ``payload.generated_at``; JSON is not indexable portably, so
    this reads the due pending rows (a small set: the outbox drains within seconds) and filters.
    """
    # Only the two fields the check reads, extracted by the database: the relay runs this before
    # every batch, and decoding each candidate's whole payload was ~4% of the worker tree's CPU.
    candidates = session.execute(
        select(N.id, _URI, _GENERATED_AT)
        .where(_due(now))
        .order_by(N.created_at, N.id)
        .limit(limit * 4)
    ).all()
    stale = [
        rid
        for rid, uri, generated_at in candidates
        if link_is_stale({"oauth_window_uri": uri, "generated_at": generated_at}, now, max_age)
    ][:limit]
    if not stale:
        return []
    taken = leases.claim(
        session,
        N,
        where=and_(N.id.in_(stale), _due(now)),
        order_by=(N.created_at, N.id),
        owner=owner,
        until=now + lease,
        limit=limit,
        returning=(N.id,),
    )
    ids = [row.id for row in taken]
    rows = session.execute(
        select(N.id, N.payload, N.link_params, Member)
        .join(Member, Member.id == N.member_id)
        .where(N.id.in_(ids))
        .order_by(N.created_at, N.id)
    ).all()
    return [StaleLink(r.id, dict(r.payload), r.link_params, r.Member) for r in rows]


def replace_link(
    session: Session, notification_id: uuid.UUID, owner: str, *, payload: dict[str, Any]
) -> bool:
    """Store a regenerated link's payload on a row ``owner`` still holds (and release it)."""
    result = session.execute(
        update(N)
        .where(N.id == notification_id, N.claim_owner == owner, N.status == NS.PENDING)
        .values(payload=payload, claim_owner=None, claim_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, ids: Iterable[uuid.UUID], owner: str, **values: Any) -> int:
    """Give leases back (``values`` are set on the way, e.g. ``next_attempt_at``)."""
    return leases.release(session, N, ids, owner, **values)


def renew(session: Session, ids: Iterable[uuid.UUID], owner: str, *, until: datetime) -> int:
    """Heartbeat for rows a relay is still delivering."""
    return leases.renew(session, N, ids, owner, until=until)


_EPISODE = N.payload["episode"].as_integer()
_REMINDER = N.payload["reminder"].as_integer()


def mark_sent(session: Session, ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Not filtered on the owner: the message did go out, whoever holds the claim now.
    The rows marked are the funnel's NOTIFIED (same transaction)."""
    if ids:
        sent = session.execute(
            update(N)
            .where(bulk.one_of(session, N.id, ids), N.status == NS.PENDING)
            .values(
                status=NS.SENT,
                sent_at=now,
                claim_owner=None,
                claim_expires_at=None,
                next_attempt_at=None,
                last_error=None,
                updated_at=now,
            )
            # The two fields the funnel needs, extracted by the database: decoding each whole
            # payload again here was ~3% of the worker tree's CPU.
            .returning(N.member_id, _EPISODE, _REMINDER)
            .execution_options(synchronize_session=False)
        ).all()
        funnel.notified(session, [(r[0], r[1], r[2]) for r in sent], now)


def held_rows(session: Session, ids: Iterable[uuid.UUID], owner: str) -> list[Notification]:
    """Pending rows ``owner`` still holds, as objects to update (failed deliveries)."""
    ids = list(ids)
    if not ids:
        return []
    return list(
        session.scalars(
            select(N).where(N.id.in_(ids), N.status == NS.PENDING, N.claim_owner == owner)
        )
    )


# --- reading for people -----------------------------------------------------------------------


def backlog(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(N).where(N.status == NS.PENDING)) or 0
    )


def oldest_pending_at(session: Session) -> datetime | None:
    """When the oldest notification still pending was written (None: nothing pending)."""
    return session.scalar(select(func.min(N.created_at)).where(N.status == NS.PENDING))


def counts_by_status(session: Session) -> dict[str, int]:
    found = dict(session.execute(select(N.status, func.count()).group_by(N.status)).all())
    return {s.value: int(found.get(s.value, 0)) for s in NS}


def recent(
    session: Session, *, status: str | None, member_guid: str | None, limit: int
) -> list[Notification]:
    query = select(N).order_by(N.created_at.desc(), N.id).limit(limit)
    if status is not None:
        query = query.where(N.status == status)
    if member_guid is not None:
        query = query.join(Member, Member.id == N.member_id).where(
            Member.member_guid == member_guid
        )
    return list(session.scalars(query))


def statuses(session: Session, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    return dict(session.execute(select(N.id, N.status).where(N.id.in_(ids))).all())


def requeue(session: Session, ids: Sequence[uuid.UUID] | None) -> list[uuid.UUID]:
    """Dead rows (all, or those of ``ids``) back to pending with a fresh attempt budget."""
    where = [N.status == NS.DEAD] + ([N.id.in_(ids)] if ids else [])
    return list(
        session.scalars(
            update(N)
            .where(*where)
            .values(
                status=NS.PENDING,
                attempts=0,
                next_attempt_at=None,
                claim_owner=None,
                claim_expires_at=None,
            )
            .returning(N.id)
            .execution_options(synchronize_session=False)
        )
    )


def for_member(session: Session, member_id: int) -> list[Notification]:
    return list(session.scalars(select(N).where(N.member_id == member_id)))


def created_since(session: Session, at: datetime) -> int:
    return int(session.scalar(select(func.count()).select_from(N).where(N.created_at >= at)) or 0)


def latest_open(session: Session) -> list[tuple[uuid.UUID, str]]:
    """(notification id, member guid) of the newest notification of each member whose episode
    is open and matches it: the links a person could still use."""
    from worker.core.policy import IN_EPISODE

    newest = (
        select(N.member_id, func.max(N.created_at).label("at")).group_by(N.member_id).subquery()
    )
    rows = session.execute(
        select(N.id, Member.member_guid)
        .join(newest, and_(newest.c.member_id == N.member_id, newest.c.at == N.created_at))
        .join(Member, Member.id == N.member_id)
        .where(Member.reauth_state.in_([s.value for s in IN_EPISODE]))
        .order_by(Member.member_guid)
    ).all()
    return [(row[0], row[1]) for row in rows]
