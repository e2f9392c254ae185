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
A *database* failure at the mark (a dropped connection, a failover) is not a crash: the mark is
retried with backoff while the claim still holds (:func:`record_with_retry`), because giving up
there means delivering the whole batch a second time.

With ``REAUTH_NOTIFY_GROUPING=user`` the claim takes whole users (rows not grouped yet, once the
user's grouping window has closed) and whole groups (retries), :mod:`worker.core.grouping` forms
one message per group, and the group's id is stored on its rows in a transaction of its own
**before** the delivery, so a retry or a redelivery after a crash sends the same rows under the
same id. Every row of a group shares its message's result: sent together, retried with one
backoff, dead together; a stale link holds back its whole group.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from worker import failpoints, tracing
from worker.config import NotifyGrouping, Settings
from worker.core import grouping
from worker.core.backoff import backoff_delay
from worker.core.contract import link_is_stale
from worker.core.grouping import Group
from worker.core.states import NotificationStatus
from worker.errors import SinkError, SinkPermanentError, SinkTransientError, StorageError
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

    ``deferred`` counts stale rows put back untouched (their link is refreshed first), with
    the rows of their groups. Every count is of rows; ``messages`` counts the messages handed to
    the sink (fewer than the rows with ``user`` grouping).
    """

    claimed: int = 0
    messages: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0
    deferred: int = 0
    sent_ids: list[uuid.UUID] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, int]:
        data = asdict(self)
        data.pop("sent_ids")
        return data

    def add(self, marked: RelayResult) -> None:
        """Take in what a mark committed (its sent, retried and dead rows)."""
        self.sent += marked.sent
        self.retried += marked.retried
        self.dead += marked.dead
        self.sent_ids.extend(marked.sent_ids)


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
    group_of: dict[uuid.UUID, uuid.UUID] | None = None,
) -> None:
    """Mark delivered rows sent; count a failed attempt on the others (held by ``owner``).

    Rows of one message (``group_of``: row id → message id) share its outcome: one attempt
    count, one backoff, dead together.
    """
    group_of = group_of or {}
    sent = [nid for nid, outcome in outcomes.items() if outcome.delivered]
    failed = {nid: o for nid, o in outcomes.items() if not o.delivered}
    dead_lines: list[dict[str, Any]] = []  # logged once committed (a try may roll back)
    with session_scope(sessions) as session:
        notifications.mark_sent(session, sent, now)
        together: dict[uuid.UUID, list[Any]] = {}
        for row in notifications.held_rows(session, failed, owner):
            together.setdefault(group_of.get(row.id, row.id), []).append(row)
        for message_id, rows in together.items():
            outcome = failed[rows[0].id]
            error = outcome.error or SinkTransientError("no error recorded")  # for the type checker
            attempts = max(row.attempts for row in rows) + 1
            permanent = isinstance(error, SinkPermanentError)
            dead = permanent or attempts >= settings.notify_max_attempts
            next_at = (
                None
                if dead
                else now
                + backoff_delay(
                    attempts,
                    base=settings.backoff_base,
                    cap=settings.backoff_cap,
                    retry_after=outcome.retry_after,
                )
            )
            for row in rows:
                row.attempts = attempts
                row.last_error = _error_text(error)
                row.claim_owner = None
                row.claim_expires_at = None
                row.next_attempt_at = next_at
                if dead:
                    row.status = NotificationStatus.DEAD
                    result.dead += 1
                    dead_lines.append({
                        "notification_id": str(row.id), "attempts": row.attempts,
                        "error": row.last_error, "permanent": permanent,
                        **({"message_id": str(message_id)} if message_id != row.id else {}),
                    })  # fmt: skip
                else:
                    result.retried += 1
    for line in dead_lines:
        log.warning("notify.dead", **line)
    result.sent += len(sent)
    result.sent_ids.extend(sent)


#: First pause before retrying a failed mark, and the longest pause between two tries.
MARK_RETRY_FIRST = 0.05
MARK_RETRY_CAP = 1.0
#: The mark never retries longer than this, whatever the lease: well inside a task's soft time
#: limit (REAUTH_TASK_TIME_LIMIT - 10 s, 80 s by default).
MARK_RETRY_MAX = 30.0


@dataclass
class LeaseClock:
    """When this relay's claim on its rows runs out, on the monotonic clock: the claim's lease,
    pushed on by each heartbeat that was written (a failed one does not count)."""

    lease: float
    ends: float = field(init=False)

    def __post_init__(self) -> None:
        self.renewed()

    def renewed(self) -> None:
        self.ends = time.monotonic() + self.lease


def record_with_retry(
    sessions: sessionmaker[Session],
    outcomes: dict[uuid.UUID, DeliveryResult],
    *,
    settings: Settings,
    now: datetime,
    owner: str,
    result: RelayResult,
    log: Log,
    group_of: dict[uuid.UUID, uuid.UUID] | None,
    lease: LeaseClock,
) -> None:
    """:func:`record_outcomes`, retried on :class:`StorageError` while the rows are still ours.

    The messages are out already: if this mark fails for good, the lease expires and the whole
    batch is delivered again. A dropped connection or a failover usually heals within seconds,
    so the mark keeps trying (full-jitter backoff) until one heartbeat interval before the claim
    runs out (``lease``; at most :data:`MARK_RETRY_MAX`), then raises and lets the lease do its
    work (at least once, nothing lost). Every try is a whole transaction, and the mark is
    idempotent: ``mark_sent`` only moves PENDING rows, and a failed row is updated only while
    this relay still holds it. So a try whose commit landed but whose acknowledgement was lost
    is not applied twice; the retry then finds nothing left to do, and this batch's
    ``retried``/``dead`` counts miss those rows (the rows themselves are right).
    """
    started = time.monotonic()
    deadline = min(lease.ends - settings.claim_heartbeat.total_seconds(), started + MARK_RETRY_MAX)
    pause = MARK_RETRY_FIRST
    tries = 0
    while True:
        tries += 1
        attempt = RelayResult()  # counts only from the try that committed
        try:
            record_outcomes(
                sessions, outcomes, settings=settings, now=now, owner=owner,
                result=attempt, log=log, group_of=group_of,
            )  # fmt: skip
        except StorageError as exc:
            wait = random.uniform(0, pause)  # jitter, not a secret
            fields = {"tries": tries, "error_type": type(exc).__name__, "error": str(exc)}
            if time.monotonic() + wait >= deadline:
                log.error("notify.mark_failed", rows=len(outcomes), **fields)
                raise
            log.warning("notify.mark_retry", rows=len(outcomes), **fields)
            time.sleep(wait)
            pause = min(pause * 2, MARK_RETRY_CAP)
            continue
        result.add(attempt)
        return


# --- the relay ----------------------------------------------------------------------------------


def _deliver(sink: Sink, messages: list[dict[str, Any]], log: Log) -> list[DeliveryResult]:
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
    return results


def _form_groups(batch: Sequence[Claimed], settings: Settings, now: datetime) -> list[Group]:
    if settings.notify_grouping is NotifyGrouping.MEMBER:
        return grouping.singles(c.id for c in batch)
    return grouping.form_groups(
        grouping.Row(
            id=c.id,
            user_guid=c.user_guid,
            idempotency_key=c.idempotency_key,
            created_at=c.created_at if c.created_at is not None else now,  # always read here
            group_id=c.group_id,
        )
        for c in batch
    )


def _store_new_groups(
    sessions: sessionmaker[Session], groups: list[Group], owner: str
) -> list[Group]:
    """Fix the new groups on their rows before anything is delivered (crash safety: a
    redelivery finds the same group). Rows we no longer hold (canceled meanwhile) drop out."""
    new = [g for g in groups if g.new]
    if not new:
        return groups
    with session_scope(sessions) as session:
        kept = notifications.assign_groups(session, {g.id: g.rows for g in new}, owner)
    stored = [
        replace(g, rows=tuple(r for r in g.rows if r in kept), new=False) if g.new else g
        for g in groups
    ]
    return [g for g in stored if g.rows]


def _renew_leases(
    sessions: sessionmaker[Session],
    ids: list[uuid.UUID],
    *,
    owner: str,
    now: datetime,
    settings: Settings,
    log: Log,
    lease: LeaseClock,
) -> Callable[[], None]:
    """The relay's heartbeat while a sink delivers: the rows stay ours for one more lease
    (``lease`` learns when a renewal was written)."""
    started = time.monotonic()

    def beat() -> None:
        # ``now`` is the batch's clock; advance it by the time the delivery has taken so far.
        until = now + timedelta(seconds=time.monotonic() - started) + settings.notify_lease
        try:
            with session_scope(sessions) as session:
                notifications.renew(session, ids, owner, until=until)
            lease.renewed()
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
    # Started before the claim's transaction: never later than the lease it writes.
    lease = LeaseClock(settings.notify_lease.total_seconds())
    with session_scope(sessions) as session:
        if settings.notify_grouping is NotifyGrouping.USER:
            batch = notifications.claim_due_groups(
                session,
                now=now,
                owner=owner,
                lease=settings.notify_lease,
                limit=limit or settings.notify_batch_size,
                cutoff=grouping.window_cutoff(now, settings.grouping_window),
            )
        else:
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

    groups = _form_groups(batch, settings, now)
    stale = {c.id for c in batch if is_stale(c.payload, now, settings.link_max_age)}
    if stale:
        # Delivering a link that may be dead is worse than delivering it late; a group waits
        # whole, so its rows still go out together once the link is refreshed.
        deferred = [r for g in groups if stale.intersection(g.rows) for r in g.rows]
        log.warning("notify.stale_deferred", count=len(deferred))
        with session_scope(sessions) as session:
            notifications.release(
                session, deferred, owner, next_attempt_at=now + settings.notify_lease
            )
        result.deferred = len(deferred)
        groups = [g for g in groups if not stale.intersection(g.rows)]
    groups = _store_new_groups(sessions, groups, owner)
    if groups:
        payloads = {c.id: c.payload for c in batch}
        # The row id is authoritative for a member message's id and the group id for a grouped
        # one: it is the consumers' dedupe key and the webhook-id, so it must not depend on what
        # the payload happens to say.
        messages = [grouping.message_for(g, payloads) for g in groups]
        ids = [r for g in groups for r in g.rows]
        beat = _renew_leases(
            sessions, ids, owner=owner, now=now, settings=settings, log=log, lease=lease
        )
        # One span for the batch, linked to the span that wrote each row (its member's MX call):
        # the delivery often runs in another trace (a sweep, the end of a grouping window).
        written = {c.id: c.trace_parent for c in batch}
        with (
            tracing.span(
                "reauth.relay",
                {"reauth.rows": len(ids), "reauth.messages": len(messages),
                 "reauth.grouping": settings.notify_grouping.value},
                links=[tracing.from_traceparent(written[r]) for r in ids],
            ),
            leases.heartbeat(beat, settings.claim_heartbeat),
        ):  # fmt: skip
            results = _deliver(sink, messages, log)
        failpoints.hit("after_deliver")
        outcomes = {r: res for g, res in zip(groups, results, strict=True) for r in g.rows}
        group_of = {r: g.id for g in groups for r in g.rows}
        result.messages = len(messages)
        record_with_retry(
            sessions,
            outcomes,
            settings=settings,
            now=now,
            owner=owner,
            result=result,
            log=log,
            group_of=group_of,
            lease=lease,
        )
    log.info("notify.relayed", **result.as_dict())
    return result
