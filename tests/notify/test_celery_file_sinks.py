"""The Celery-task and JSON-lines sinks, and how ``build_sink`` picks a sink from settings."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from notify_helpers import NOW, add_notification, get_row
from sqlalchemy.orm import Session, sessionmaker

from worker.config import Settings
from worker.errors import ConfigError, SinkTransientError
from worker.notify.relay import deliver_batch
from worker.notify.sinks import CelerySink, FileSink, RedisStreamSink, build_sink
from worker.notify.webhook import WebhookSink


@pytest.mark.redis
def test_celery_sink_sends_one_json_task_per_message_on_the_queue(
    db_url: str,
    sessions: sessionmaker[Session],
    redis_url: str,
    settings_for: Callable[..., Settings],
) -> None:
    """Each notification becomes task ``notify_celery_task(message)`` on ``notify_celery_queue``,
    JSON-serialised, with the notification id as task id; a kombu consumer receives it."""
    settings = settings_for(
        db_url,
        notify_sink="celery",
        broker_url=redis_url,
        notify_celery_task="notifications.reauth_link",
        notify_celery_queue="test-notifications",
    )
    ids = {str(add_notification(sessions)) for _ in range(2)}
    sink = build_sink(settings)
    assert isinstance(sink, CelerySink)
    try:
        result = deliver_batch(settings=settings, sessions=sessions, sink=sink, now=NOW, owner="r")
    finally:
        sink.close()
    assert result.sent == 2

    received: list[Any] = []
    with Connection(redis_url) as conn:
        queue = conn.SimpleQueue("test-notifications", no_ack=True)
        try:
            for _ in range(2):
                received.append(queue.get(timeout=2))
        finally:
            queue.close()
    for message in received:
        assert message.content_type == "application/json"
        assert message.headers["task"] == "notifications.reauth_link"
        args, kwargs, _embed = message.decode()
        assert kwargs == {}
        (payload,) = args
        assert message.headers["id"] == payload["id"]
        assert payload["type"] == "reauth.oauth_link"
    assert {m.decode()[0][0]["id"] for m in received} == ids


def test_celery_sink_with_unreachable_broker_fails_the_batch_fast() -> None:
    """A broker that refuses connections: every message of the batch gets SinkTransientError,
    and the publish retries are paid once per batch, not once per message."""
    sink = CelerySink.from_url("redis://127.0.0.1:1/0", task="t", queue="q")
    started = time.monotonic()
    try:
        results = sink.deliver([{"id": str(i)} for i in range(20)])
    finally:
        sink.close()
    assert time.monotonic() - started < 3
    assert len(results) == 20
    assert all(isinstance(r.error, SinkTransientError) for r in results)


def test_file_sink_appends_json_lines(
    db_url: str,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    settings_for: Callable[..., Settings],
) -> None:
    """The file sink appends one JSON object per line; later batches append, never rewrite."""
    path = tmp_path / "out" / "notifications.jsonl"
    path.parent.mkdir()
    settings = settings_for(db_url, notify_file=str(path))
    first = add_notification(sessions)
    sink = build_sink(settings)
    assert isinstance(sink, FileSink)
    deliver_batch(settings=settings, sessions=sessions, sink=sink, now=NOW, owner="r")
    second = add_notification(sessions)
    deliver_batch(settings=settings, sessions=sessions, sink=sink, now=NOW, owner="r")
    sink.close()

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["id"] for m in lines] == [str(first), str(second)]
    assert get_row(sessions, second).status == "sent"


def test_file_sink_write_failure_is_transient(tmp_path: Path) -> None:
    """An unwritable path (here: a directory) is a transient error, retried later."""
    with pytest.raises(SinkTransientError, match="file sink"):
        FileSink(tmp_path).deliver([{"id": "x"}])


def test_build_sink_follows_effective_notify_sink(
    sqlite_url: str, settings_for: Callable[..., Settings]
) -> None:
    """No sink configured: file without Redis, the stream with Redis; explicit choices win."""
    cases: list[tuple[dict[str, Any], type]] = [
        ({}, FileSink),
        ({"redis_url": "redis://127.0.0.1:6379/15"}, RedisStreamSink),
        (
            {
                "notify_sink": "webhook",
                "webhook_url": "https://hooks.example.com/h",
                "webhook_secret": "a-raw-secret-of-24-bytes-or-more",
            },
            WebhookSink,
        ),
        ({"notify_sink": "celery", "redis_url": "redis://127.0.0.1:6379/15"}, CelerySink),
    ]
    for overrides, kind in cases:
        sink = build_sink(settings_for(sqlite_url, **overrides))
        try:
            assert isinstance(sink, kind), overrides
        finally:
            sink.close()


def test_celery_sink_without_any_broker_is_a_config_error(
    sqlite_url: str, settings_for: Callable[..., Settings]
) -> None:
    """REAUTH_NOTIFY_SINK=celery with no broker or Redis URL names what is missing."""
    with pytest.raises(ConfigError, match="REAUTH_BROKER_URL"):
        build_sink(settings_for(sqlite_url, notify_sink="celery"))
