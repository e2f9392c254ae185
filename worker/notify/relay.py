"""The outbox relay: claim pending notifications, deliver them to a sink, record the outcome.

One call of :func:`dispatch_pending` handles one batch in three steps, each its own short
transaction, and never talks to a sink while a transaction is open:

1. **claim** due rows with a lease (``claim_owner``, ``claim_expires_at``). On PostgreSQL one
   ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``, so concurrent relays
   take disjoint rows; on SQLite the same statement runs in a ``BEGIN IMMEDIATE`` transaction
   (one writer at a time), which gives the same exclusivity.
2. **refresh** stale links: MX URIs are one-time and MX documents no lifetime, so a row whose
   ``generated_at`` is older than ``link_max_age`` is handed to the pipeline's refresher, re-read,
   and only then delivered. Without a refresher it is deferred, never delivered stale.
3. **deliver** outside any transaction, then **mark** the per-message results: sent; transient
   failure (backoff with full jitter, claim released); permanent failure or out of attempts
   (dead).

A crash between deliver and mark leaves the row claimed; when the lease expires another run
delivers it again with the same ``id``. Delivery is therefore at least once, and nothing is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from models.notification import Notification
from worker import failpoints
from worker.backoff import backoff_delay
from worker.config import Settings
from worker.db import session_scope
from worker.errors import SinkError, SinkPermanentError, SinkTransientError
from worker.logging import scrub_all
from worker.notify.sinks import DeliveryResult, Sink

#: Type of the bound logger passed through one dispatch.
Log = Any

PENDING = "pending"
SENT = "sent"
DEAD = "dead"
#: The member's episode ended (OAuth succeeded, or it is no longer eligible) before delivery.
CANCELED = "canceled"
#: Longest ``last_error`` kept on a row.
MAX_ERROR_LENGTH = 500


class LinkRefresher(Protocol):
    """Regenerates the URI of stale notifications (implemented by the pipeline).

    For each id it asks MX for a fresh URI for the same member, episode and reminder, writes an
    attempt row, and updates the notification's payload (``oauth_window_uri``, ``generated_at``)
    in its own transaction. It may leave some ids stale (MX failed); the relay then retries them
    later like any transient failure.
    """

    # Positional-only, so any callable taking (ids, now) fits whatever it names its parameters.
    def __call__(self, notification_ids: Sequence[uuid.UUID], now: datetime, /) -> None: ...


@dataclass
class DispatchResult:
    """Counts of one :func:`dispatch_pending` call.

    ``deferred`` counts stale rows put back untouched because no refresher was given.
    """

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    refreshed: int = 0
    deferred: int = 0
    sent_ids: list[uuid.UUID] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, int]:
        data = asdict(self)
        data.pop("sent_ids")
        return data


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: uuid.UUID
    payload: dict[str, Any]
    attempts: int


# --- step 1: claim ------------------------------------------------------------------------------


def claim_batch(
    sessions: sessionmaker[Session], *, now: datetime, owner: str, lease: timedelta, limit: int
) -> list[_Claimed]:
    """Claim up to ``limit`` due pending rows for ``owner`` until ``now + lease``; commits."""
    n = Notification
    due = (
        select(n.id)
        .where(
            n.status == PENDING,
            or_(n.next_attempt_at.is_(None), n.next_attempt_at <= now),
            or_(n.claim_expires_at.is_(None), n.claim_expires_at <= now),
        )
        # Oldest first, so a backlog drains in order; id breaks ties deterministically.
        .order_by(n.created_at, n.id)
        .limit(limit)
        # Rendered on PostgreSQL only; SQLite's BEGIN IMMEDIATE already makes us the one writer.
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(n)
        .where(n.id.in_(due.scalar_subquery()))
        .values(claim_owner=owner, claim_expires_at=now + lease)
        .returning(n.id, n.payload, n.attempts, n.created_at)
        .execution_options(synchronize_session=False)
    )
    with session_scope(sessions) as session:
        rows = session.execute(stmt).all()
    # RETURNING has no order; deliver oldest first like the claim chose them.
    rows = sorted(rows, key=lambda row: (row.created_at, str(row.id)))
    return [_Claimed(row.id, dict(row.payload), row.attempts) for row in rows]


# --- step 2: stale links ------------------------------------------------------------------------


def is_stale(payload: dict[str, Any], now: datetime, max_age: timedelta) -> bool:
    """True when the payload's link is older than ``max_age`` (or its age cannot be read)."""
    raw = payload.get("generated_at")
    if not isinstance(raw, str):
        return True
    try:
        generated = datetime.fromisoformat(raw)
    except ValueError:
        return True
    if generated.tzinfo is None:  # the contract says UTC; a naive value is read as UTC
        return True
    return now - generated > max_age


def _reload(
    sessions: sessionmaker[Session], ids: Sequence[uuid.UUID], owner: str
) -> dict[uuid.UUID, _Claimed]:
    """Re-read rows we still hold (pending, claimed by ``owner``) after a refresh."""
    n = Notification
    with session_scope(sessions) as session:
        rows = session.execute(
            select(n.id, n.payload, n.attempts).where(
                n.id.in_(ids), n.status == PENDING, n.claim_owner == owner
            )
        ).all()
    return {row.id: _Claimed(row.id, dict(row.payload), row.attempts) for row in rows}


def _defer(
    sessions: sessionmaker[Session], ids: Sequence[uuid.UUID], *, owner: str, until: datetime
) -> None:
    """Release claims without spending an attempt, not due before ``until``."""
    n = Notification
    with session_scope(sessions) as session:
        session.execute(
            update(n)
            .where(n.id.in_(ids), n.claim_owner == owner, n.status == PENDING)
            .values(claim_owner=None, claim_expires_at=None, next_attempt_at=until)
            .execution_options(synchronize_session=False)
        )


# --- step 3: mark -------------------------------------------------------------------------------


def _error_text(error: BaseException) -> str:
    text = scrub_all([f"{error.__class__.__name__}: {error}"])[0]
    return text[:MAX_ERROR_LENGTH]


def _mark(
    sessions: sessionmaker[Session],
    outcomes: dict[uuid.UUID, DeliveryResult],
    *,
    settings: Settings,
    now: datetime,
    owner: str,
    result: DispatchResult,
    log: Log,
) -> None:
    n = Notification
    sent = [nid for nid, outcome in outcomes.items() if outcome.delivered]
    failed = {nid: o for nid, o in outcomes.items() if not o.delivered}
    with session_scope(sessions) as session:
        if sent:
            # Not filtered on the owner: the message did go out, whoever holds the claim now.
            session.execute(
                update(n)
                .where(n.id.in_(sent), n.status == PENDING)
                .values(
                    status=SENT,
                    sent_at=now,
                    claim_owner=None,
                    claim_expires_at=None,
                    next_attempt_at=None,
                    last_error=None,
                )
                .execution_options(synchronize_session=False)
            )
        rows = (
            session.scalars(
                select(n).where(n.id.in_(failed), n.status == PENDING, n.claim_owner == owner)
            ).all()
            if failed
            else []
        )
        for row in rows:
            outcome = failed[row.id]
            error = outcome.error or SinkTransientError("no error recorded")  # for the type checker
            row.attempts += 1
            row.last_error = _error_text(error)
            row.claim_owner = None
            row.claim_expires_at = None
            permanent = isinstance(error, SinkPermanentError)
            if permanent or row.attempts >= settings.notify_max_attempts:
                row.status = DEAD
                row.next_attempt_at = None
                result.dead += 1
                log.warning(
                    "notify.dead",
                    notification_id=str(row.id),
                    attempts=row.attempts,
                    error=row.last_error,
                    permanent=permanent,
                )
            else:
                row.next_attempt_at = now + backoff_delay(
                    row.attempts,
                    base=settings.backoff_base,
                    cap=settings.backoff_cap,
                    retry_after=outcome.retry_after,
                )
                result.retried += 1
    result.sent += len(sent)
    result.sent_ids.extend(sent)


def _handle_stale(
    batch: list[_Claimed],
    stale: set[uuid.UUID],
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    now: datetime,
    owner: str,
    refresher: LinkRefresher | None,
    result: DispatchResult,
    log: Log,
) -> tuple[list[_Claimed], dict[uuid.UUID, DeliveryResult]]:
    """Refresh stale links (or defer them); returns what to deliver and the early failures."""
    ordered = [c.id for c in batch if c.id in stale]
    if refresher is None:
        # Delivering a link that may be dead is worse than delivering it late.
        log.warning("notify.stale_deferred", count=len(stale), reason="no link refresher")
        _defer(sessions, ordered, owner=owner, until=now + settings.notify_lease)
        result.deferred = len(stale)
        return [c for c in batch if c.id not in stale], {}
    try:
        refresher(ordered, now)
    except Exception as exc:
        # Whatever the refresher managed before failing is picked up by the re-read below.
        log.warning("notify.refresh_failed", count=len(stale), error=_error_text(exc))
    fresh = _reload(sessions, ordered, owner)
    failures: dict[uuid.UUID, DeliveryResult] = {}
    kept: list[_Claimed] = []
    for c in batch:
        if c.id not in stale:
            kept.append(c)
        elif c.id not in fresh:
            continue  # sent, dead or re-claimed meanwhile: no longer ours to deliver
        elif is_stale(fresh[c.id].payload, now, settings.link_max_age):
            failures[c.id] = DeliveryResult(SinkTransientError("link still stale after refresh"))
        else:
            result.refreshed += 1
            kept.append(fresh[c.id])
    return kept, failures


# --- the relay ----------------------------------------------------------------------------------


def _deliver(sink: Sink, batch: Sequence[_Claimed], log: Log) -> dict[uuid.UUID, DeliveryResult]:
    # The row id is authoritative for the message id: it is the consumers' dedupe key and the
    # webhook-id, so it must not depend on what the payload happens to say.
    messages = [{**c.payload, "id": str(c.id)} for c in batch]
    try:
        results = sink.deliver(messages)
        if len(results) != len(messages):
            raise SinkTransientError(
                f"sink {sink.name} returned {len(results)} results for {len(messages)} messages"
            )
    except SinkError as exc:
        results = [DeliveryResult(exc)] * len(messages)
    except Exception as exc:
        # A sink bug must not loop forever: count it as a failed attempt so it ends up dead.
        log.exception("notify.sink_failed")
        results = [DeliveryResult(SinkTransientError(_error_text(exc)))] * len(messages)
    return {c.id: r for c, r in zip(batch, results, strict=True)}


def dispatch_pending(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    sink: Sink,
    now: datetime,
    owner: str,
    refresher: LinkRefresher | None = None,
    limit: int | None = None,
) -> DispatchResult:
    """Deliver one batch of due notifications (at most ``limit``, default notify_batch_size).

    ``owner`` names this relay in the claim columns (e.g. the Celery task id); ``now`` is the
    time used for due checks, the lease, link age and backoff. Returns the batch's counts; call
    again while ``claimed == limit`` to drain a backlog.
    """
    # Looked up per call, not at import: the logger then follows the logging configuration in
    # force now (worker start-up, CLI, a test's capture) instead of the one at first use.
    log = structlog.get_logger(__name__).bind(relay_owner=owner, sink=sink.name)
    result = DispatchResult()
    batch = claim_batch(
        sessions,
        now=now,
        owner=owner,
        lease=settings.notify_lease,
        limit=limit or settings.notify_batch_size,
    )
    result.claimed = len(batch)
    if not batch:
        return result

    outcomes: dict[uuid.UUID, DeliveryResult] = {}
    stale = {c.id for c in batch if is_stale(c.payload, now, settings.link_max_age)}
    if stale:
        batch, outcomes = _handle_stale(
            batch,
            stale,
            settings=settings,
            sessions=sessions,
            now=now,
            owner=owner,
            refresher=refresher,
            result=result,
            log=log,
        )

    if batch:
        outcomes.update(_deliver(sink, batch, log))
        failpoints.hit("after_deliver")
    if outcomes:
        _mark(sessions, outcomes, settings=settings, now=now, owner=owner, result=result, log=log)
    log.info("notify.dispatched", **result.as_dict())
    return result
