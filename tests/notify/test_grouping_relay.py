"""One message per person (``REAUTH_NOTIFY_GROUPING=user``): the relay on SQLite and PostgreSQL.

Pins: the members of one user due within the window go out as one ``reauth.oauth_links``
message, held no longer than the window from the earliest; a member due after the window gets
its own message; users never share a message; each member is still delivered at most once per
(member, episode, reminder) and never lost across a crash (the redelivery carries the same group
id and rows); a canceled member drops out of its group; all rows of a group share retries and
dead-lettering; a stale link holds back its group; every sink carries the grouped message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from notify_helpers import NOW, Receiver, RecordingSink, get_row, oauth_uri
from notify_helpers import add_for_user as add
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from models import FunnelEvent, Member, Notification
from worker.config import Settings
from worker.core.contract import group_id, idempotency_key
from worker.core.funnel import Stage
from worker.errors import SinkPermanentError, SinkTransientError
from worker.notify.relay import RelayResult, deliver_batch
from worker.notify.sinks import DeliveryResult, FileSink, Message, RedisStreamSink
from worker.notify.webhook import WebhookSink
from worker.service.erasure import forget
from worker.store import notifications
from worker.store.db import session_scope

WINDOW = timedelta(minutes=5)
SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMy"


class SimulatedCrash(BaseException):
    """The relay process dying (not an Exception: nothing in the relay catches it)."""


@pytest.fixture
def settings(db_url: str, settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(
        db_url,
        notify_grouping="user",
        grouping_window=WINDOW,
        notify_max_attempts=3,
        backoff_base=timedelta(seconds=10),
        backoff_cap=timedelta(minutes=1),
    )


def relay(
    settings: Settings,
    sessions: sessionmaker[Session],
    sink: Any,
    now: datetime,
    owner: str = "relay-1",
) -> RelayResult:
    return deliver_batch(settings=settings, sessions=sessions, sink=sink, now=now, owner=owner)


def listed(message: dict[str, Any]) -> list[str]:
    """The member guids a message is about (grouped or single)."""
    if message["type"] == "reauth.oauth_links":
        return [m["member_guid"] for m in message["members"]]
    return [message["member_guid"]]


def cancel(sessions: sessionmaker[Session], member_guid: str, now: datetime) -> None:
    """The member's episode ended: what store.decisions.apply does to its undelivered rows."""
    with session_scope(sessions) as s:
        member_id = s.scalar(select(Member.id).where(Member.member_guid == member_guid))
        assert member_id is not None
        notifications.cancel_pending(s, [member_id], now)


# --- the window ----------------------------------------------------------------------------


@pytest.mark.redis
def test_three_members_of_one_user_go_out_as_one_message_on_the_stream(
    settings: Settings, sessions: sessionmaker[Session], redis_url: str
) -> None:
    """Due together → held for the window (never longer) → exactly one stream entry listing all
    three with their links; the rows are sent under the group id; a rerun adds nothing."""
    client = redis.Redis.from_url(redis_url)
    stream = "test:grouped"
    client.delete(stream)
    sink = RedisStreamSink(client, stream=stream, maxlen=1000, owns_client=False)
    ids = [
        add(sessions, "MBR-a"),
        add(sessions, "MBR-b", due=NOW + timedelta(seconds=30)),
        add(sessions, "MBR-c", due=NOW + timedelta(minutes=2)),
    ]
    try:
        assert relay(settings, sessions, sink, NOW + timedelta(minutes=3)).claimed == 0
        assert relay(settings, sessions, sink, NOW + WINDOW - timedelta(seconds=1)).claimed == 0
        assert client.xlen(stream) == 0

        result = relay(settings, sessions, sink, NOW + WINDOW)

        assert (result.claimed, result.messages, result.sent) == (3, 1, 3)
        entries = client.xrange(stream)
        assert len(entries) == 1
        message = json.loads(entries[0][1][b"payload"])
        assert message["type"] == "reauth.oauth_links"
        assert message["version"] == 1
        assert message["user_guid"] == "USR-1"
        keys = [idempotency_key(m, 1, 0) for m in ("MBR-a", "MBR-b", "MBR-c")]
        assert message["id"] == str(group_id(keys))
        assert message["idempotency_keys"] == keys
        assert [m["id"] for m in message["members"]] == [str(i) for i in ids]
        assert listed(message) == ["MBR-a", "MBR-b", "MBR-c"]
        for member in message["members"]:
            assert member["oauth_window_uri"] == oauth_uri(f"{member['member_guid']}-0")
            assert (member["reason"], member["channel"], member["episode"]) == (
                "revoked",
                "BROWSER",
                1,
            )
            assert member["institution_code"] == f"bank-{member['member_guid']}"
        for nid in ids:
            row = get_row(sessions, nid)
            assert (row.status, row.group_id, row.sent_at) == ("sent", group_id(keys), NOW + WINDOW)

        # Exactly once per member: a rerun of the relay, and the scan writing the same
        # (member, episode, reminder) again, add nothing.
        with session_scope(sessions) as s:
            member_id = s.scalar(select(Member.id).where(Member.member_guid == "MBR-a"))
            again = {"idempotency_key": keys[0], "member_id": member_id, "payload": {}}
            assert notifications.insert(s, [{"id": uuid.uuid4(), **again}]) == 0
        assert relay(settings, sessions, sink, NOW + timedelta(hours=1)).claimed == 0
        assert client.xlen(stream) == 1
    finally:
        client.delete(stream)
        client.close()


def test_member_due_after_the_window_gets_its_own_message(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A fourth member of the same user due after the group went out starts its own window and
    goes out alone, as its own single ``reauth.oauth_link`` message."""
    for guid in ("MBR-a", "MBR-b", "MBR-c"):
        add(sessions, guid)
    sink = RecordingSink()
    assert relay(settings, sessions, sink, NOW + WINDOW).messages == 1
    late = add(sessions, "MBR-d", due=NOW + timedelta(minutes=6))

    assert relay(settings, sessions, sink, NOW + timedelta(minutes=10)).claimed == 0
    result = relay(settings, sessions, sink, NOW + timedelta(minutes=11))

    assert (result.claimed, result.messages) == (1, 1)
    assert [listed(m) for m in sink.delivered] == [["MBR-a", "MBR-b", "MBR-c"], ["MBR-d"]]
    single = sink.delivered[1]
    assert (single["type"], single["id"]) == ("reauth.oauth_link", str(late))
    assert get_row(sessions, late).group_id == late


def test_two_users_get_two_messages(settings: Settings, sessions: sessionmaker[Session]) -> None:
    for guid in ("MBR-a", "MBR-b"):
        add(sessions, guid, user="USR-1")
    for guid in ("MBR-x", "MBR-y"):
        add(sessions, guid, user="USR-2", due=NOW + timedelta(seconds=5))
    sink = RecordingSink()

    assert relay(settings, sessions, sink, NOW + WINDOW).messages == 1  # USR-2 still held
    assert relay(settings, sessions, sink, NOW + WINDOW + timedelta(seconds=5)).messages == 1

    assert [(m["user_guid"], listed(m)) for m in sink.delivered] == [
        ("USR-1", ["MBR-a", "MBR-b"]),
        ("USR-2", ["MBR-x", "MBR-y"]),
    ]


def test_a_backlog_goes_out_at_once_in_one_message_per_user(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Rows whose window closed long ago (the relay was down) wait no further."""
    for guid in ("MBR-a", "MBR-b"):
        add(sessions, guid, due=NOW - timedelta(hours=1), generated_at=NOW)
    sink = RecordingSink()
    assert relay(settings, sessions, sink, NOW).messages == 1
    assert listed(sink.delivered[0]) == ["MBR-a", "MBR-b"]


def test_a_batch_never_splits_a_person_and_a_full_batch_says_so(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """The batch limit counts rows, but a person's rows stay together: the last person may take
    the batch over the limit, so a full batch claims at least the limit (the delivery loop then
    goes on draining) and never part of a person."""
    for user in ("USR-1", "USR-2", "USR-3"):
        for k in range(3):
            add(sessions, f"MBR-{user}-{k}", user=user, due=NOW + timedelta(seconds=int(user[-1])))
    sink = RecordingSink()
    later = NOW + WINDOW + timedelta(seconds=3)

    first = deliver_batch(
        settings=settings, sessions=sessions, sink=sink, now=later, owner="r", limit=4
    )
    second = deliver_batch(
        settings=settings, sessions=sessions, sink=sink, now=later, owner="r", limit=4
    )

    assert (first.claimed, first.messages, second.claimed, second.messages) == (6, 2, 3, 1)
    assert [m["user_guid"] for m in sink.delivered] == ["USR-1", "USR-2", "USR-3"]
    assert all(len(m["members"]) == 3 for m in sink.delivered)


def test_member_grouping_keeps_one_message_per_row(
    db_url: str, sessions: sessionmaker[Session], settings_for: Callable[..., Settings]
) -> None:
    """The default: no hold, no group id stored, one single message per member."""
    member_settings = settings_for(db_url, grouping_window=WINDOW)
    ids = [add(sessions, guid) for guid in ("MBR-a", "MBR-b", "MBR-c")]
    sink = RecordingSink()

    result = relay(member_settings, sessions, sink, NOW)

    assert (result.claimed, result.messages, result.sent) == (3, 3, 3)
    assert [m["type"] for m in sink.delivered] == ["reauth.oauth_link"] * 3
    assert sorted(m["id"] for m in sink.delivered) == sorted(str(i) for i in ids)
    assert all(get_row(sessions, i).group_id is None for i in ids)


# --- cancellation, retries, dead-lettering, stale links ---------------------------------------


def test_a_canceled_member_drops_out_of_its_group(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Canceled while held: not in the message. Canceled after a failed attempt: the retry
    carries the same id without it."""
    for guid in ("MBR-a", "MBR-b", "MBR-c"):
        add(sessions, guid)
    cancel(sessions, "MBR-b", NOW + timedelta(minutes=1))
    failing = RecordingSink(answer=lambda _m: DeliveryResult(SinkTransientError("down")))

    assert relay(settings, sessions, failing, NOW + WINDOW).retried == 2
    (first,) = failing.delivered
    assert listed(first) == ["MBR-a", "MBR-c"]

    cancel(sessions, "MBR-c", NOW + WINDOW + timedelta(seconds=1))
    ok = RecordingSink()
    assert relay(settings, sessions, ok, NOW + WINDOW + timedelta(minutes=2)).sent == 1
    (retry,) = ok.delivered
    assert retry["type"] == "reauth.oauth_links"  # stays grouped, under the same id
    assert retry["id"] == first["id"]
    assert listed(retry) == ["MBR-a"]


def test_retries_and_dead_letters_are_shared_by_the_group(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A failed grouped message: every row one attempt, one backoff, no new window wait; a new
    sibling meanwhile does not join it; a permanent failure kills every row at once."""
    ids = [add(sessions, guid) for guid in ("MBR-a", "MBR-b", "MBR-c")]
    failing = RecordingSink(answer=lambda _m: DeliveryResult(SinkTransientError("down")))
    assert relay(settings, sessions, failing, NOW + WINDOW).retried == 3

    rows = [get_row(sessions, i) for i in ids]
    assert {(r.attempts, r.next_attempt_at, r.status) for r in rows} == {
        (1, rows[0].next_attempt_at, "pending")
    }
    retry_at = rows[0].next_attempt_at
    assert retry_at is not None
    late = add(sessions, "MBR-d", due=NOW + WINDOW + timedelta(seconds=1))

    assert relay(settings, sessions, failing, retry_at - timedelta(seconds=1)).claimed == 0
    dead = RecordingSink(answer=lambda _m: DeliveryResult(SinkPermanentError("answered 410")))
    result = relay(settings, sessions, dead, retry_at)  # due again: sent at once, no window

    assert (result.claimed, result.messages, result.dead) == (3, 1, 3)
    assert dead.delivered[0]["id"] == failing.delivered[0]["id"]
    assert listed(dead.delivered[0]) == ["MBR-a", "MBR-b", "MBR-c"]
    assert {(get_row(sessions, i).status, get_row(sessions, i).attempts) for i in ids} == {
        ("dead", 2)
    }
    assert get_row(sessions, late).status == "pending"

    # retry-dead puts the whole group back; it goes out again under the same id.
    with session_scope(sessions) as s:
        assert set(notifications.requeue(s, ids)) == set(ids)
    ok = RecordingSink()
    assert relay(settings, sessions, ok, retry_at + timedelta(seconds=1)).sent == 3
    assert relay(settings, sessions, ok, late_due(sessions, late) + WINDOW).sent == 1
    assert [(m["type"], m["id"]) for m in ok.delivered] == [
        ("reauth.oauth_links", failing.delivered[0]["id"]),
        ("reauth.oauth_link", str(late)),
    ]


def late_due(sessions: sessionmaker[Session], nid: uuid.UUID) -> datetime:
    return get_row(sessions, nid).created_at


def test_a_stale_link_holds_back_its_whole_group(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """One member's link too old: the user's rows are deferred together (the refresh step
    regenerates the link first), then go out together."""
    fresh = [add(sessions, guid) for guid in ("MBR-a", "MBR-b")]
    stale = add(sessions, "MBR-c", generated_at=NOW - timedelta(minutes=30))
    sink = RecordingSink()

    result = relay(settings, sessions, sink, NOW + WINDOW)

    assert (result.claimed, result.deferred, result.messages) == (3, 3, 0)
    assert all(get_row(sessions, i).group_id is None for i in [*fresh, stale])
    # What service.refresh does: a new link on the row, released.
    with session_scope(sessions) as s:
        row = s.get(Notification, stale)
        assert row is not None
        row.payload = {**row.payload, "generated_at": "2026-03-02T09:05:30Z"}
    later = NOW + WINDOW + settings.notify_lease
    assert relay(settings, sessions, sink, later).messages == 1
    assert listed(sink.delivered[0]) == ["MBR-a", "MBR-b", "MBR-c"]


# --- crash safety ------------------------------------------------------------------------------


def test_crash_after_delivery_redelivers_the_same_group_after_the_lease(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """The group id is stored before the delivery: after a crash between deliver and mark, the
    next relay sends the same rows under the same id (the consumer's dedupe key), and a sibling
    that became due meanwhile does not join it. Nothing is lost, no member is sent under two
    group ids."""
    ids = [add(sessions, guid) for guid in ("MBR-a", "MBR-b")]

    class CrashAfterDelivery(RecordingSink):
        def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
            super().deliver(messages)
            raise SimulatedCrash

    crashing = CrashAfterDelivery()
    with pytest.raises(SimulatedCrash):
        relay(settings, sessions, crashing, NOW + WINDOW)
    gid = uuid.UUID(crashing.delivered[0]["id"])
    for nid in ids:
        row = get_row(sessions, nid)
        assert (row.status, row.claim_owner, row.group_id) == ("pending", "relay-1", gid)
    sibling = add(sessions, "MBR-c", due=NOW + WINDOW + timedelta(seconds=1))

    after_lease = NOW + WINDOW + settings.notify_lease
    sink = RecordingSink()
    assert relay(settings, sessions, sink, after_lease - timedelta(seconds=1)).claimed == 0
    result = relay(settings, sessions, sink, after_lease, owner="relay-2")

    assert (result.claimed, result.sent) == (2, 2)
    assert sink.delivered == crashing.delivered
    assert all(get_row(sessions, i).status == "sent" for i in ids)
    assert get_row(sessions, sibling).group_id is None  # still held, for its own message


def test_a_group_partly_held_by_another_relay_is_not_sent_in_part(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Rows of a stored group are taken only when every pending row of it is free and due."""
    ids = [add(sessions, guid) for guid in ("MBR-a", "MBR-b")]
    gid = group_id([idempotency_key("MBR-a", 1, 0), idempotency_key("MBR-b", 1, 0)])
    with session_scope(sessions) as s:
        s.execute(update(Notification).values(group_id=gid))
        s.execute(
            update(Notification)
            .where(Notification.id == ids[1])
            .values(claim_owner="other", claim_expires_at=NOW + timedelta(minutes=1))
        )
    sink = RecordingSink()
    assert relay(settings, sessions, sink, NOW).claimed == 0
    assert relay(settings, sessions, sink, NOW + timedelta(minutes=1)).sent == 2
    assert listed(sink.delivered[0]) == ["MBR-a", "MBR-b"]


# --- every sink carries the grouped message ----------------------------------------------------


@pytest.fixture
def grouped_rows(sessions: sessionmaker[Session]) -> list[uuid.UUID]:
    return [add(sessions, guid) for guid in ("MBR-a", "MBR-b")]


def test_webhook_sink_posts_the_grouped_message_signed_under_the_group_id(
    settings: Settings,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    grouped_rows: list[uuid.UUID],
) -> None:
    sink = WebhookSink(receiver.url, SECRET, timeout=5)
    try:
        assert relay(settings, sessions, sink, NOW + WINDOW).sent == 2
    finally:
        sink.close()
    (got,) = receiver.received
    message = Webhook(SECRET).verify(got.body, got.headers)
    assert message["type"] == "reauth.oauth_links"
    assert got.headers["webhook-id"] == message["id"]
    assert listed(message) == ["MBR-a", "MBR-b"]


def test_file_sink_writes_the_grouped_message_as_one_line(
    settings: Settings,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    grouped_rows: list[uuid.UUID],
) -> None:
    path = tmp_path / "out.jsonl"
    assert relay(settings, sessions, FileSink(path), NOW + WINDOW).sent == 2
    (line,) = path.read_text().splitlines()
    assert listed(json.loads(line)) == ["MBR-a", "MBR-b"]


@pytest.mark.redis
def test_celery_sink_sends_the_grouped_message_as_one_task(
    settings: Settings,
    sessions: sessionmaker[Session],
    redis_url: str,
    grouped_rows: list[uuid.UUID],
) -> None:
    from kombu import Connection

    from worker.notify.sinks import CelerySink

    sink = CelerySink.from_url(redis_url, task="notifications.reauth_link", queue="test-grouped")
    try:
        assert relay(settings, sessions, sink, NOW + WINDOW).sent == 2
    finally:
        sink.close()
    with Connection(redis_url) as conn:
        queue = conn.SimpleQueue("test-grouped", no_ack=True)
        try:
            received = queue.get(timeout=2)
        finally:
            queue.close()
    (payload,) = received.decode()[0]
    assert received.headers["id"] == payload["id"]
    assert payload["type"] == "reauth.oauth_links"
    assert listed(payload) == ["MBR-a", "MBR-b"]


# --- the funnel sees every member of a grouped message ------------------------------------------


def _notified(sessions: sessionmaker[Session]) -> list[tuple[str, int]]:
    """(member guid, reminder) of every NOTIFIED funnel event, sorted."""
    with session_scope(sessions) as s:
        rows = s.execute(
            select(Member.member_guid, FunnelEvent.reminder)
            .join(Member, Member.id == FunnelEvent.member_id)
            .where(FunnelEvent.stage == Stage.NOTIFIED.value)
        ).all()
    return sorted((guid, int(reminder)) for guid, reminder in rows)


def test_a_grouped_message_records_notified_once_per_member_and_reminder(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Each row of a ``reauth.oauth_links`` message is the funnel's NOTIFIED for its member and
    reminder, once: a redelivery after a crash between deliver and mark records nothing twice,
    and the next reminder, grouped again, is a NOTIFIED of its own."""
    for guid in ("MBR-a", "MBR-b", "MBR-c"):
        add(sessions, guid, reminder=1)

    class CrashAfterDelivery(RecordingSink):
        def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
            super().deliver(messages)
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        relay(settings, sessions, CrashAfterDelivery(), NOW + WINDOW)
    assert _notified(sessions) == []  # delivered, not yet marked: not yet a fact

    after_lease = NOW + WINDOW + settings.notify_lease
    result = relay(settings, sessions, RecordingSink(), after_lease, owner="relay-2")
    assert (result.messages, result.sent) == (1, 3)
    first = [("MBR-a", 1), ("MBR-b", 1), ("MBR-c", 1)]
    assert _notified(sessions) == first
    # A late relay that still thinks it holds the rows marks nothing and records nothing.
    with session_scope(sessions) as s:
        ids = list(s.scalars(select(Notification.id)))
        notifications.mark_sent(s, ids, after_lease)
    assert _notified(sessions) == first

    later = after_lease + timedelta(hours=1)
    for guid in ("MBR-a", "MBR-b"):
        add(sessions, guid, due=later, reminder=2)
    sink = RecordingSink()
    assert relay(settings, sessions, sink, later + WINDOW).messages == 1
    assert listed(sink.delivered[0]) == ["MBR-a", "MBR-b"]
    assert _notified(sessions) == sorted([*first, ("MBR-a", 2), ("MBR-b", 2)])


def test_forgetting_one_member_of_a_stored_group_leaves_the_others_whole(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """``reauth forget --member`` while that member's row waits in a group (a failed delivery
    stored the group id): its row goes, the siblings' rows keep the group id and the retry
    goes out under the same id without the forgotten member; its NOTIFIED never appears."""
    for guid in ("MBR-a", "MBR-b", "MBR-c"):
        add(sessions, guid, reminder=1)
    failing = RecordingSink(answer=lambda _m: DeliveryResult(SinkTransientError("down")))
    assert relay(settings, sessions, failing, NOW + WINDOW).retried == 3
    (first,) = failing.delivered

    with session_scope(sessions) as s:
        done = forget(
            s, user_guid=None, member_guid="MBR-b", why="request", actor="dpo",
            now=NOW + WINDOW + timedelta(seconds=1),
        )  # fmt: skip
    assert (done["members"], done["notifications"], done["pending_canceled"]) == (1, 1, 1)
    with session_scope(sessions) as s:
        left = s.execute(select(Notification.group_id, Notification.payload)).all()
    assert sorted(p["member_guid"] for _, p in left) == ["MBR-a", "MBR-c"]
    assert {g for g, _ in left} == {uuid.UUID(first["id"])}

    ok = RecordingSink()
    assert relay(settings, sessions, ok, NOW + WINDOW + timedelta(minutes=2)).sent == 2
    (retry,) = ok.delivered
    assert retry["id"] == first["id"]
    assert listed(retry) == ["MBR-a", "MBR-c"]
    assert "MBR-b" not in json.dumps(retry)
    assert _notified(sessions) == [("MBR-a", 1), ("MBR-c", 1)]
