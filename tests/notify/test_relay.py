"""The outbox relay against SQLite and PostgreSQL, with an in-memory sink.

Pins: claims and leases, per-message outcomes (sent / backoff / dead), at-least-once delivery
across a crash, and that a stale link is held back instead of being delivered (refreshing it is
the refresh step's job: tests/service/test_pipeline.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog
from notify_helpers import NOW, RecordingSink, add_notification, get_row, oauth_uri
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Notification
from worker.config import Settings
from worker.errors import SinkPermanentError, SinkTransientError, StorageError
from worker.notify.relay import deliver_batch, is_stale
from worker.notify.sinks import DELIVERED, DeliveryResult, Message
from worker.store import notifications
from worker.store.db import session_scope
from worker.store.notifications import Claimed


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the relay catches it."""


@pytest.fixture
def settings(db_url: str, settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(
        db_url,
        notify_max_attempts=3,
        backoff_base=timedelta(seconds=10),
        backoff_cap=timedelta(minutes=1),
    )


def claim_batch(sessions: sessionmaker[Session], **kwargs: Any) -> list[Claimed]:
    with session_scope(sessions) as s:
        return notifications.claim_due(s, **kwargs)


def dispatch(
    settings: Settings,
    sessions: sessionmaker[Session],
    sink: Any,
    *,
    now: datetime = NOW,
    owner: str = "relay-1",
    **kwargs: Any,
) -> Any:
    return deliver_batch(
        settings=settings, sessions=sessions, sink=sink, now=now, owner=owner, **kwargs
    )


def test_normal_run_delivers_each_row_once_and_marks_it_sent(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Every pending row is delivered once with its own id, then marked sent and unclaimed."""
    ids = {add_notification(sessions) for _ in range(3)}
    sink = RecordingSink()

    result = dispatch(settings, sessions, sink)

    assert (result.claimed, result.sent, result.retried, result.dead) == (3, 3, 0, 0)
    assert {uuid.UUID(m["id"]) for m in sink.delivered} == ids
    for nid in ids:
        row = get_row(sessions, nid)
        assert (row.status, row.sent_at, row.claim_owner, row.attempts) == ("sent", NOW, None, 0)
    assert dispatch(settings, sessions, sink).claimed == 0
    assert len(sink.delivered) == 3


def test_claim_skips_rows_not_due_or_leased_and_takes_expired_leases(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Due = next_attempt_at passed and no live lease; an expired lease is taken over."""
    later = add_notification(sessions)
    leased = add_notification(sessions)
    expired = add_notification(sessions)
    with session_scope(sessions) as s:
        s.execute(
            update(Notification)
            .where(Notification.id == later)
            .values(next_attempt_at=NOW + timedelta(seconds=1))
        )
        s.execute(
            update(Notification)
            .where(Notification.id == leased)
            .values(claim_owner="other", claim_expires_at=NOW + timedelta(seconds=1))
        )
        s.execute(
            update(Notification)
            .where(Notification.id == expired)
            .values(claim_owner="crashed", claim_expires_at=NOW)
        )

    claimed = claim_batch(sessions, now=NOW, owner="me", lease=timedelta(minutes=2), limit=10)

    assert [c.id for c in claimed] == [expired]
    row = get_row(sessions, expired)
    assert (row.claim_owner, row.claim_expires_at) == ("me", NOW + timedelta(minutes=2))


def test_limit_bounds_the_batch_and_oldest_go_first(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A batch holds at most ``limit`` rows, chosen oldest first."""
    ids = [add_notification(sessions) for _ in range(4)]
    sink = RecordingSink()

    assert dispatch(settings, sessions, sink, limit=2).sent == 2
    assert [uuid.UUID(m["id"]) for m in sink.delivered] == ids[:2]


def test_transient_failure_backs_off_releases_claim_then_succeeds(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A transient failure spends one attempt, schedules a jittered retry and keeps the row."""
    nid = add_notification(sessions)
    failing = RecordingSink(answer=lambda _m: DeliveryResult(SinkTransientError("down")))

    assert dispatch(settings, sessions, failing).retried == 1

    row = get_row(sessions, nid)
    assert row.status == "pending"
    assert row.attempts == 1
    assert row.claim_owner is None
    assert row.last_error == "SinkTransientError: down"
    assert row.next_attempt_at is not None
    assert NOW + timedelta(seconds=5) <= row.next_attempt_at <= NOW + timedelta(minutes=1)
    assert dispatch(settings, sessions, RecordingSink()).claimed == 0  # not due yet

    ok = RecordingSink()
    assert dispatch(settings, sessions, ok, now=row.next_attempt_at).sent == 1
    assert get_row(sessions, nid).status == "sent"


def test_retry_after_is_never_undercut(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """A receiver's Retry-After delays the next attempt at least that long (within the cap)."""
    nid = add_notification(sessions)
    sink = RecordingSink(
        answer=lambda _m: DeliveryResult(SinkTransientError("429"), retry_after=50)
    )
    dispatch(settings, sessions, sink)
    next_at = get_row(sessions, nid).next_attempt_at
    assert next_at is not None
    assert next_at >= NOW + timedelta(seconds=50)


def test_permanent_failure_is_dead_at_once(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A permanent error is never retried: the row is dead after one attempt."""
    nid = add_notification(sessions)
    sink = RecordingSink(answer=lambda _m: DeliveryResult(SinkPermanentError("answered 410")))

    assert dispatch(settings, sessions, sink).dead == 1
    row = get_row(sessions, nid)
    assert (row.status, row.attempts, row.next_attempt_at) == ("dead", 1, None)
    assert dispatch(settings, sessions, sink, now=NOW + timedelta(days=1)).claimed == 0


def test_dead_after_max_attempts_while_others_are_delivered(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """One always-failing message goes dead after notify_max_attempts; the rest are sent."""
    bad = add_notification(sessions, member_guid="MBR-BAD")
    good = [add_notification(sessions) for _ in range(2)]
    sink = RecordingSink(
        answer=lambda m: (
            DeliveryResult(SinkTransientError("500"))
            if m["member_guid"] == "MBR-BAD"
            else DELIVERED
        )
    )

    first = dispatch(settings, sessions, sink)
    assert (first.sent, first.retried) == (2, 1)
    assert all(get_row(sessions, g).status == "sent" for g in good)
    now = NOW
    for _ in range(2):
        now += timedelta(minutes=2)  # past backoff_cap, so the row is due again
        dispatch(settings, sessions, sink, now=now)

    row = get_row(sessions, bad)
    assert (row.status, row.attempts) == ("dead", 3)
    assert sum(m["member_guid"] == "MBR-BAD" for m in sink.delivered) == 3


def test_batch_wide_sink_error_applies_to_every_message(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A sink that raises SinkTransientError (e.g. broker down) fails the whole batch softly."""

    class Down(RecordingSink):
        def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
            raise SinkTransientError("redis stream: ConnectionError")

    ids = [add_notification(sessions) for _ in range(2)]
    assert dispatch(settings, sessions, Down()).retried == 2
    assert all(get_row(sessions, i).attempts == 1 for i in ids)


def test_sink_bug_spends_attempts_instead_of_looping_forever(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """An unexpected exception from a sink counts as a failed attempt, with its class recorded."""

    class Buggy(RecordingSink):
        def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
            raise KeyError("oops")

    nid = add_notification(sessions)
    assert dispatch(settings, sessions, Buggy()).retried == 1
    assert "KeyError" in (get_row(sessions, nid).last_error or "")


def test_crash_between_delivery_and_mark_redelivers_same_id_after_lease(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """At least once: a crash after delivering leaves the row claimed; after the lease it is
    delivered again with the same id and then marked sent. Nothing is lost."""
    nid = add_notification(sessions)

    class CrashAfterDelivery(RecordingSink):
        def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
            super().deliver(messages)
            raise SimulatedCrash

    crashing = CrashAfterDelivery()
    with pytest.raises(SimulatedCrash):
        dispatch(settings, sessions, crashing)
    row = get_row(sessions, nid)
    assert (row.status, row.claim_owner) == ("pending", "relay-1")

    sink = RecordingSink()
    after_lease = NOW + settings.notify_lease
    assert dispatch(settings, sessions, sink, now=after_lease - timedelta(seconds=1)).claimed == 0
    assert dispatch(settings, sessions, sink, now=after_lease, owner="relay-2").sent == 1

    assert [m["id"] for m in crashing.delivered + sink.delivered] == [str(nid), str(nid)]
    assert get_row(sessions, nid).status == "sent"


def flaky_mark(
    monkeypatch: pytest.MonkeyPatch, failures: int | None, *, landed: bool = False
) -> list[int]:
    """Make the mark fail like a dropped connection, ``failures`` times (``None``: always):
    before its commit (rolled back), or with ``landed`` after it (the commit is in, its
    acknowledgement lost). Returns the list the tries are counted in (rows marked each)."""
    real = notifications.mark_sent
    tries: list[int] = []

    def mark_sent(session: Session, ids: Sequence[uuid.UUID], now: datetime) -> None:
        real(session, ids, now)
        tries.append(len(ids))
        if failures is None or len(tries) <= failures:
            if landed:
                session.commit()
            raise StorageError("database unreachable (REAUTH_DATABASE_URL): connection lost")

    monkeypatch.setattr(notifications, "mark_sent", mark_sent)
    return tries


def sent_rows(sessions: sessionmaker[Session]) -> int:
    with session_scope(sessions) as s:
        return s.query(Notification).filter(Notification.status == "sent").count()


def test_mark_retried_after_a_lost_connection_so_nothing_is_delivered_twice(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database drops the mark twice after delivery (rolled back): the mark is retried
    (not left to the lease, which would deliver the batch again), the rows end sent, a failed
    delivery in the same batch is counted and logged dead once, from the try that committed."""
    ids = {add_notification(sessions) for _ in range(3)}
    doomed = add_notification(sessions)
    with session_scope(sessions) as s:  # two failures behind it: its third is its last
        s.execute(update(Notification).where(Notification.id == doomed).values(attempts=2))
    tries = flaky_mark(monkeypatch, failures=2)

    class FailsOne(RecordingSink):
        def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
            super().deliver(messages)
            return [
                DeliveryResult(SinkTransientError("busy")) if m["id"] == str(doomed) else DELIVERED
                for m in messages
            ]

    sink = FailsOne()
    with structlog.testing.capture_logs() as events:
        result = dispatch(settings, sessions, sink)

    assert tries == [3, 3, 3]
    assert (result.sent, result.retried, result.dead) == (3, 0, 1)
    assert sorted(result.sent_ids) == sorted(ids)
    retries = [e for e in events if e["event"] == "notify.mark_retry"]
    assert [(e["tries"], e["error_type"]) for e in retries] == [
        (1, "StorageError"),
        (2, "StorageError"),
    ]
    assert [e["notification_id"] for e in events if e["event"] == "notify.dead"] == [str(doomed)]
    assert all(get_row(sessions, nid).status == "sent" for nid in ids)
    assert get_row(sessions, doomed).status == "dead"
    assert dispatch(settings, sessions, sink, now=NOW + settings.notify_lease).claimed == 0
    assert len(sink.delivered) == 4


def test_a_mark_whose_commit_landed_is_not_applied_twice(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark's commit lands but its acknowledgement is lost: the retry finds the rows sent
    already and changes nothing (one funnel NOTIFIED per row, not two); nothing is redelivered."""
    from models import FunnelEvent

    ids = {add_notification(sessions) for _ in range(2)}
    tries = flaky_mark(monkeypatch, failures=1, landed=True)
    sink = RecordingSink()

    result = dispatch(settings, sessions, sink)

    assert tries == [2, 2]  # asked again: its UPDATE matches no PENDING row, so nothing moves
    assert result.sent == 2
    assert sent_rows(sessions) == 2
    with session_scope(sessions) as s:
        assert s.query(FunnelEvent).count() == 2
    assert dispatch(settings, sessions, sink, now=NOW + settings.notify_lease).claimed == 0
    assert sorted(m["id"] for m in sink.delivered) == sorted(str(i) for i in ids)


def test_mark_gives_up_before_the_claim_runs_out_and_the_lease_redelivers(
    db_url: str,
    settings_for: Callable[..., Settings],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database that stays down: the mark stops trying one heartbeat before the claim's
    lease ends (lease 3 s, heartbeat 1 s: ~2 s in), raises StorageError (the task's retry
    takes over), and the row, still claimed, is delivered again after the lease: at least
    once, nothing lost."""
    settings = settings_for(
        db_url, notify_lease=timedelta(seconds=3), claim_heartbeat=timedelta(seconds=1)
    )
    nid = add_notification(sessions)
    tries = flaky_mark(monkeypatch, failures=None)
    sink = RecordingSink()

    started = time.monotonic()
    with pytest.raises(StorageError), structlog.testing.capture_logs() as events:
        dispatch(settings, sessions, sink)
    elapsed = time.monotonic() - started

    # It kept trying for a while (its deadline is ~2 s in), and stopped before the lease (3 s)
    # ran out, when another relay may take the rows: loose bounds, not a speed measurement.
    assert 0.5 < elapsed < 3.0
    assert len(tries) >= 3
    assert [e["event"] for e in events if e["log_level"] == "error"] == ["notify.mark_failed"]
    row = get_row(sessions, nid)
    assert (row.status, row.claim_owner) == ("pending", "relay-1")
    monkeypatch.undo()
    again = dispatch(settings, sessions, sink, now=NOW + settings.notify_lease, owner="relay-2")
    assert again.sent == 1
    assert [m["id"] for m in sink.delivered] == [str(nid), str(nid)]


def test_stale_link_is_held_back_not_delivered(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A stale row stays pending, unspent, and is not due again for a lease."""
    stale = add_notification(sessions, generated_at=NOW - timedelta(minutes=30))
    fresh = add_notification(sessions)
    sink = RecordingSink()

    result = dispatch(settings, sessions, sink)

    assert (result.sent, result.deferred) == (1, 1)
    assert [m["id"] for m in sink.delivered] == [str(fresh)]
    row = get_row(sessions, stale)
    assert (row.status, row.attempts, row.claim_owner) == ("pending", 0, None)
    assert row.next_attempt_at == NOW + settings.notify_lease


def test_is_stale_reads_contract_timestamps() -> None:
    """``generated_at`` in the contract's Z form is compared with link_max_age; unreadable or
    naive timestamps count as stale (never deliver a link of unknown age). A message without a
    URI (REAUTH_LINK_MODE=reconnect) has nothing to go stale."""
    age = timedelta(minutes=10)
    uri = {"oauth_window_uri": oauth_uri("x")}
    assert not is_stale({**uri, "generated_at": "2026-03-02T08:50:00Z"}, NOW, age)
    assert is_stale({**uri, "generated_at": "2026-03-02T08:49:59Z"}, NOW, age)
    assert is_stale({**uri, "generated_at": "2026-03-02T08:59:00"}, NOW, age)
    assert is_stale({**uri, "generated_at": "yesterday"}, NOW, age)
    assert is_stale(uri, NOW, age)
    assert not is_stale({"oauth_window_uri": None, "generated_at": None}, NOW, age)


def test_logs_one_summary_line_and_no_uri(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A batch logs one ``notify.relayed`` line with counts; no log event holds a URI."""
    add_notification(sessions)
    add_notification(sessions, generated_at=NOW - timedelta(hours=2))
    with structlog.testing.capture_logs() as events:
        dispatch(settings, sessions, RecordingSink())
    summary = [e for e in events if e["event"] == "notify.relayed"]
    assert len(summary) == 1
    assert summary[0]["sent"] == 1
    assert summary[0]["deferred"] == 1
    assert "oauth" not in repr(events)


@pytest.mark.postgres
def test_postgres_claim_skips_rows_locked_by_another_relay(
    pg_url: str, settings_for: Callable[..., Settings]
) -> None:
    """SKIP LOCKED: a row locked by a concurrent claim is skipped, not waited on."""
    from worker.store.db import make_engine, session_factory

    engine = make_engine(pg_url)
    try:
        sessions = session_factory(engine)
        locked = add_notification(sessions)
        free = add_notification(sessions)
        with session_scope(sessions) as holder:
            holder.execute(
                select(Notification.id).where(Notification.id == locked).with_for_update()
            )
            claimed = claim_batch(
                sessions, now=NOW, owner="other", lease=timedelta(minutes=2), limit=10
            )
        assert [c.id for c in claimed] == [free]
    finally:
        engine.dispose()
