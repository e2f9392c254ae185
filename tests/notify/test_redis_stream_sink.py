"""The Redis stream sink on real Redis, driven through the relay on SQLite and PostgreSQL.

Pins the issue's acceptance criteria: each outbox row appears on the stream exactly once with
the contract's fields, and a crash between XADD and mark-sent yields one extra delivery with the
same id, never a loss. Also pins that the documented consumer-group recipe works on what we
write.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
import redis
from notify_helpers import NOW, add_notification, get_row
from sqlalchemy.orm import Session, sessionmaker

from worker.config import Settings
from worker.errors import SinkTransientError
from worker.notify.relay import deliver_batch
from worker.notify.sinks import DeliveryResult, Message, RedisStreamSink, build_sink

pytestmark = pytest.mark.redis

CONTRACT_FIELDS = {
    "id",
    "idempotency_key",
    "type",
    "version",
    "user_guid",
    "member_guid",
    "institution_code",
    "reason",
    "oauth_window_uri",
    "generated_at",
    "episode",
    "reminder",
    "skip_aggregation",
    "channel",
    "reconnect_url",
}


class SimulatedCrash(BaseException):
    """The relay process dying right after XADD (not an Exception: nothing catches it)."""


@pytest.fixture
def settings(db_url: str, redis_url: str, settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(db_url, redis_url=redis_url, notify_stream="test:notifications")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def read_stream(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    entries = client.xrange(stream)
    assert all(set(fields) == {b"payload"} for _id, fields in entries)
    return [json.loads(fields[b"payload"]) for _id, fields in entries]


def test_each_row_appears_on_the_stream_exactly_once_with_contract_fields(
    settings: Settings, sessions: sessionmaker[Session], client: redis.Redis
) -> None:
    """Normal run: one stream entry per outbox row, field ``payload`` = the contract JSON."""
    ids = {str(add_notification(sessions)) for _ in range(5)}
    sink = build_sink(settings)
    assert isinstance(sink, RedisStreamSink)
    try:
        first = deliver_batch(settings=settings, sessions=sessions, sink=sink, now=NOW, owner="a")
        again = deliver_batch(settings=settings, sessions=sessions, sink=sink, now=NOW, owner="b")
    finally:
        sink.close()

    assert (first.sent, again.claimed) == (5, 0)
    messages = read_stream(client, settings.notify_stream)
    assert sorted(m["id"] for m in messages) == sorted(ids)
    for m in messages:
        assert set(m) == CONTRACT_FIELDS
        assert (m["type"], m["version"]) == ("reauth.oauth_link", 1)
        assert m["idempotency_key"] == f"{m['member_guid']}:1:0"


def test_crash_between_xadd_and_mark_sent_gives_one_extra_delivery_not_a_loss(
    settings: Settings, sessions: sessionmaker[Session], client: redis.Redis
) -> None:
    """The XADD succeeds, the relay dies before marking sent: after the lease the row is
    delivered again with the same id (two entries, one id), then marked sent; nothing lost."""
    nid = add_notification(sessions)
    real = RedisStreamSink.from_url(
        settings.redis_url or "", stream=settings.notify_stream, maxlen=1000
    )

    class CrashAfterXadd:
        name = "crashing"

        def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
            real.deliver(messages)
            raise SimulatedCrash

        def close(self) -> None:
            real.close()

    try:
        with pytest.raises(SimulatedCrash):
            deliver_batch(
                settings=settings, sessions=sessions, sink=CrashAfterXadd(), now=NOW, owner="a"
            )
        assert get_row(sessions, nid).status == "pending"
        result = deliver_batch(
            settings=settings,
            sessions=sessions,
            sink=real,
            now=NOW + settings.notify_lease + timedelta(seconds=1),
            owner="b",
        )
    finally:
        real.close()

    assert result.sent == 1
    assert [m["id"] for m in read_stream(client, settings.notify_stream)] == [str(nid)] * 2
    assert get_row(sessions, nid).status == "sent"


def test_documented_consumer_group_recipe_reads_and_acks(
    settings: Settings, sessions: sessionmaker[Session], client: redis.Redis
) -> None:
    """XGROUP CREATE / XREADGROUP / XACK (docs/NOTIFICATIONS.md) consume our entries, and a
    consumer deduping on ``id`` handles a redelivered duplicate once."""
    stream, group = settings.notify_stream, "email-service"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    nid = add_notification(sessions)
    sink = build_sink(settings)
    try:
        deliver_batch(settings=settings, sessions=sessions, sink=sink, now=NOW, owner="a")
        # A duplicate, as after a relay crash: same message, second entry.
        sink.deliver(read_stream(client, stream))
    finally:
        sink.close()

    handled: list[str] = []
    seen: set[str] = set()
    reply: Any = client.xreadgroup(group, "worker-1", {stream: ">"}, count=10, block=100)
    for _stream, entries in reply:
        for entry_id, fields in entries:
            message = json.loads(fields[b"payload"])
            if message["id"] not in seen:  # dedupe on id
                seen.add(message["id"])
                handled.append(message["id"])
            client.xack(stream, group, entry_id)

    assert handled == [str(nid)]
    pending: Any = client.xpending(stream, group)
    assert pending["pending"] == 0


def test_stream_is_trimmed_approximately_to_maxlen(client: redis.Redis, redis_url: str) -> None:
    """MAXLEN ~ keeps the stream near notify_stream_maxlen instead of growing forever."""
    sink = RedisStreamSink.from_url(redis_url, stream="test:trim", maxlen=10)
    try:
        for i in range(30):
            sink.deliver([{"id": str(uuid.uuid4()), "n": j} for j in range(i * 100, i * 100 + 100)])
    finally:
        sink.close()
    assert 10 <= client.xlen("test:trim") < 3000


def test_unreachable_redis_is_a_transient_error() -> None:
    """A dead Redis fails the batch with SinkTransientError (redis errors never leak)."""
    sink = RedisStreamSink.from_url("redis://127.0.0.1:1/0", stream="s", maxlen=10)
    try:
        with pytest.raises(SinkTransientError, match="ConnectionError"):
            sink.deliver([{"id": "x"}])
    finally:
        sink.close()


def test_per_entry_failure_fails_only_that_message(client: redis.Redis, redis_url: str) -> None:
    """A command error inside the pipeline (wrong key type) is that message's transient error."""
    client.set("test:not-a-stream", "x")
    good = RedisStreamSink.from_url(redis_url, stream="test:ok", maxlen=10)
    bad = RedisStreamSink.from_url(redis_url, stream="test:not-a-stream", maxlen=10)
    try:
        assert good.deliver([{"id": "1"}])[0].delivered
        result = bad.deliver([{"id": "2"}])
    finally:
        good.close()
        bad.close()
    assert isinstance(result[0].error, SinkTransientError)
