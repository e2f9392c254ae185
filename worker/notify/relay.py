"""The outbox relay: claim pending notifications, deliver them to a sink, record the outcome.

One call of :func:`deliver_batch` handles one batch in three steps, each its own short
transaction, and never talks to a sink while a transaction is open:

1. **claim** due rows with a lease (:mod:`worker.store.leases`), so concurrent relays take
   disjoint rows;
2. **hold back** stale links: MX URIs are one-time and MX documents no lifetime, so a row whose
   ``generated_at`` is older than ``link_max_age`` is deferred, never delivered stale. Refreshing
   it is a step of its own (:mod:`worker.service.refresh`), run before each relay pass;
3. **deliver** outside any transaction, then **mark** the per-message results: sent; transient
   failure (backoff with full jitter, claim released); permanent failure or out of attempts
   (dead).

A crash between deliver and mark leaves the row claimed; when the lease expires another run
delivers it again with the same ``id``. Delivery is therefore at least once, and nothing is lost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from worker import failpoints
from worker.config import Settings
from worker.core.backoff import backoff_delay
from worker.core.contract import link_is_stale
from worker.core.states import NotificationStatus
from worker.errors import SinkError, SinkPermanentError, SinkTransientError
from worker.logging import scrub_all
from worker.notify.sinks import DeliveryResult, Sink
from worker.store import leases, notifications
from worker.store.db import session_scope
from worker.store.notifications import Claimed

#: Type of the bound logger passed through one relay batch.
Log = Any

#: Longest ``last_error`` kept on a row.
MAX_ERROR_LENGTH = 500


@dataclass
class RelayResult:
    """Counts of one :func:`deliver_batch` call.

    ``deferred`` counts stale rows put back untouched (their link is refreshed first).
    """

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    deferred: int = 0
    sent_ids: list[uuid.UUID] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, int]:
        data = asdict(self)
        data.pop("sent_ids")
        return data


# --- step 2: stale links --------------------------------------------------------------------------


def is_stale(payload: dict[str, Any], now: datetime, max_age: timedelta) -> bool:
    """True when the payload's link is older than ``max_age`` (or its age cannot be read)."""
    return link_is_stale(payload, now, max_age)


# --- step 3: mark -------------------------------------------------------------------------------


def _error_text(error: BaseException) -> str:
    text = scrub_all([f"{error.__class__.__name__}: {error}"])[0]
    return text[:MAX_ERROR_LENGTH]


def record_outcomes(
    sessions: sessionmaker[Session],
    outcomes: dict[uuid.UUID, DeliveryResult],
    *,
    settings: Settings,
    now: datetime,
    owner: str,
    result: RelayResult,
    log: Log,
) -> None:
    """Mark delivered rows sent; count a failed attempt on the others (held by ``owner``)."""
    sent = [nid for nid, outcome in outcomes.items() if outcome.delivered]
    failed = {nid: o for nid, o in outcomes.items() if not o.delivered}
    with session_scope(sessions) as session:
        notifications.mark_sent(session, sent, now)
        for row in notifications.held_rows(session, failed, owner):
            outcome = failed[row.id]
            error = outcome.error or SinkTransientError("no error recorded")  # for the type checker
            row.attempts += 1
            row.last_error = _error_text(error)
            row.claim_owner = None
            row.claim_expires_at = None
            permanent = isinstance(error, SinkPermanentError)
            if permanent or row.attempts >= settings.notify_max_attempts:
                row.status = NotificationStatus.DEAD
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


# --- the relay ----------------------------------------------------------------------------------


def _deliver(sink: Sink, batch: Sequence[Claimed], log: Log) -> dict[uuid.UUID, DeliveryResult]:
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


def _renew_leases(
    sessions: sessionmaker[Session],
    ids: list[uuid.UUID],
    *,
    owner: str,
    now: datetime,
    settings: Settings,
    log: Log,
) -> Callable[[], None]:
    """The relay's heartbeat while a sink delivers: the rows stay ours for one more lease."""
    started = time.monotonic()

    def beat() -> None:
        # ``now`` is the batch's clock; advance it by the time the delivery has taken so far.
        until = now + timedelta(seconds=time.monotonic() - started) + settings.notify_lease
        try:
            with session_scope(sessions) as session:
                notifications.renew(session, ids, owner, until=until)
        except Exception:  # the next beat tries again; the lease covers two misses
            log.warning("notify.heartbeat_failed", exc_info=True)

    return beat


def deliver_batch(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    sink: Sink,
    now: datetime,
    owner: str,
    limit: int | None = None,
) -> RelayResult:
    """Deliver one batch of due notifications (at most ``limit``, default notify_batch_size).

    ``owner`` names this relay in the claim columns (e.g. the Celery task id); ``now`` is the
    time used for due checks, the lease, link age and backoff. Returns the batch's counts; call
    again while ``claimed == limit`` to drain a backlog.
    """
    # Looked up per call, not at import: the logger then follows the logging configuration in
    # force now (worker start-up, CLI, a test's capture) instead of the one at first use.
    log = structlog.get_logger(__name__).bind(relay_owner=owner, sink=sink.name)
    result = RelayResult()
    with session_scope(sessions) as session:
        batch = notifications.claim_due(
            session,
            now=now,
            owner=owner,
            lease=settings.notify_lease,
            limit=limit or settings.notify_batch_size,
        )
    result.claimed = len(batch)
    if not batch:
        return result

    stale = [c.id for c in batch if is_stale(c.payload, now, settings.link_max_age)]
    if stale:
        # Delivering a link that may be dead is worse than delivering it late.
        log.warning("notify.stale_deferred", count=len(stale))
        with session_scope(sessions) as session:
            notifications.release(
                session, stale, owner, next_attempt_at=now + settings.notify_lease
            )
        result.deferred = len(stale)
        batch = [c for c in batch if c.id not in set(stale)]
    if batch:
        beat = _renew_leases(
            sessions, [c.id for c in batch], owner=owner, now=now, settings=settings, log=log
        )
        with leases.heartbeat(beat, settings.claim_heartbeat):
            outcomes = _deliver(sink, batch, log)
        failpoints.hit("after_deliver")
        record_outcomes(
            sessions, outcomes, settings=settings, now=now, owner=owner, result=result, log=log
        )
    log.info("notify.relayed", **result.as_dict())
    return result
