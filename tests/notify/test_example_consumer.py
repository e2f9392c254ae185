"""The example consumer in docs/examples/consumer.py, run as a script against a real Redis
stream that the relay (``REAUTH_NOTIFY_GROUPING=user``) wrote: it handles a grouped
``reauth.oauth_links`` message and a single ``reauth.oauth_link`` one, drops a redelivery by
its id, and acknowledges every entry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from notify_helpers import NOW, add_for_user
from sqlalchemy.orm import Session, sessionmaker

from worker.config import Settings
from worker.notify.relay import deliver_batch
from worker.notify.sinks import RedisStreamSink, encode

pytestmark = pytest.mark.redis

CONSUMER = Path(__file__).resolve().parents[2] / "docs" / "examples" / "consumer.py"
STREAM = "test:example-consumer"


def test_example_consumer_handles_both_message_types_once(
    db_url: str,
    sessions: sessionmaker[Session],
    redis_url: str,
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for(db_url, notify_grouping="user", grouping_window=timedelta(minutes=5))
    for guid in ("MBR-a", "MBR-b", "MBR-c"):
        add_for_user(sessions, guid, user="USR-1")
    add_for_user(sessions, "MBR-x", user="USR-2")
    client = redis.Redis.from_url(redis_url)
    client.delete(STREAM)
    sink = RedisStreamSink(client, stream=STREAM, maxlen=1000, owns_client=False)
    try:
        result = deliver_batch(
            settings=settings,
            sessions=sessions,
            sink=sink,
            now=NOW + timedelta(minutes=5),
            owner="relay",
        )
        assert (result.messages, result.sent) == (2, 4)
        # A redelivery after a crash: the same grouped message once more.
        first = client.xrange(STREAM)[0][1][b"payload"]
        client.xadd(STREAM, {"payload": first})
        # A message of a type the consumer does not know is parked (acknowledged, not sent).
        client.xadd(STREAM, {"payload": encode({"id": "x", "type": "other", "version": 9})})

        run = subprocess.run(
            [sys.executable, str(CONSUMER), "--redis-url", redis_url, "--stream", STREAM,
             "--group", "test-consumer", "--consumer", "c1", "--once"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

        assert run.returncode == 0, run.stderr
        *notices, total = run.stdout.splitlines()
        assert sorted(notices) == [
            "notify USR-1: reconnect bank-MBR-a (revoked), bank-MBR-b (revoked), "
            "bank-MBR-c (revoked)",
            "notify USR-2: reconnect bank-MBR-x (revoked)",
        ]
        assert total == "sent 2"
        assert "unsupported message other v9" in run.stderr
        assert "oauth" not in run.stdout  # the example never prints a link
        pending = client.xpending(STREAM, "test-consumer")
        assert pending["pending"] == 0

        # Run again: the group has read everything; nothing is sent twice.
        again = subprocess.run(
            [sys.executable, str(CONSUMER), "--redis-url", redis_url, "--stream", STREAM,
             "--group", "test-consumer", "--consumer", "c2", "--once"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.stdout.splitlines() == ["sent 0"]
    finally:
        client.delete(STREAM)
        client.close()
