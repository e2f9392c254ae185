"""``reauth notifications list | retry-dead | tail`` through the real entry point.

Pins exit codes (0 ok, 2 bad input or configuration), the --json shapes, that bad input changes
nothing, and that no command ever prints an oauth_window_uri.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from notify_helpers import NOW, RecordingSink, add_notification, get_row
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from models import Notification
from worker.cli import main
from worker.config import load_settings
from worker.core.contract import build_message
from worker.notify.relay import deliver_batch
from worker.notify.sinks import RedisStreamSink
from worker.store.db import session_scope

STREAM = "test:cli-notifications"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging process-wide onto the captured stderr; undo it afterwards."""
    yield
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "reauth"]
    structlog.reset_defaults()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``reauth *argv``; returns exit code, stdout and stderr of that command only."""
    capsys.readouterr()  # drop output of the test's own setup (e.g. relay log lines)
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REAUTH_DATABASE_URL", db_url)
    return db_url


def kill(sessions: sessionmaker[Session], nid: uuid.UUID) -> None:
    with session_scope(sessions) as s:
        s.execute(
            update(Notification)
            .where(Notification.id == nid)
            .values(
                status="dead", attempts=10, last_error="SinkTransientError: webhook answered 500"
            )
        )


def test_list_json_has_counts_and_rows_without_uris(
    cli_db: str, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    """``list --json``: counts per status and one object per row; links only as fingerprints."""
    sent = add_notification(sessions)
    deliver_batch(
        settings=load_settings(database_url=cli_db),
        sessions=sessions,
        sink=RecordingSink(),
        now=NOW,
        owner="r",
    )
    dead = add_notification(sessions)
    kill(sessions, dead)
    pending = add_notification(sessions)

    code, out, _ = run(capsys, "notifications", "list", "--json")

    assert code == 0
    data = json.loads(out)
    assert data["counts"] == {"pending": 1, "sent": 1, "dead": 1, "canceled": 0}
    by_id = {r["id"]: r for r in data["notifications"]}
    assert set(by_id) == {str(sent), str(dead), str(pending)}
    assert by_id[str(dead)]["last_error"] == "SinkTransientError: webhook answered 500"
    assert by_id[str(sent)]["link"].startswith("https://int-widgets.moneydesktop.com/…#")
    assert "token-" not in out


def test_list_filters_by_status_and_prints_a_table(
    cli_db: str, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--status dead`` shows only dead rows; the human form is a table plus counts."""
    dead = add_notification(sessions)
    kill(sessions, dead)
    add_notification(sessions)

    code, out, _ = run(capsys, "notifications", "list", "--status", "dead", "--json")
    assert code == 0
    assert [r["id"] for r in json.loads(out)["notifications"]] == [str(dead)]

    code, out, _ = run(capsys, "notifications", "list", "--status", "dead")
    assert code == 0
    assert "pending: 1, sent: 0, dead: 1" in out
    assert "token-" not in out


def test_list_rejects_an_unknown_status(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A status that does not exist is a usage error (exit 2) with the allowed values."""
    code, _, err = run(capsys, "notifications", "list", "--status", "failed")
    assert code == 2
    assert "pending, sent, dead" in err


def test_retry_dead_puts_every_dead_row_back_to_pending(
    cli_db: str, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --id every dead row is pending again with attempts 0 and is then delivered."""
    dead = [add_notification(sessions) for _ in range(2)]
    for nid in dead:
        kill(sessions, nid)
    other = add_notification(sessions)

    code, out, _ = run(capsys, "notifications", "retry-dead", "--json")

    assert code == 0
    assert json.loads(out) == {"count": 2, "retried": sorted(str(n) for n in dead)}
    for nid in dead:
        row = get_row(sessions, nid)
        assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, None)
    assert get_row(sessions, other).attempts == 0
    sink = RecordingSink()
    settings = load_settings(database_url=cli_db)
    deliver_batch(settings=settings, sessions=sessions, sink=sink, now=NOW, owner="r")
    assert len(sink.delivered) == 3


def test_retry_dead_with_ids_touches_only_those(
    cli_db: str, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--id`` limits the retry to the named dead rows."""
    one, two = add_notification(sessions), add_notification(sessions)
    kill(sessions, one)
    kill(sessions, two)

    code, out, _ = run(capsys, "notifications", "retry-dead", "--id", str(one))

    assert code == 0
    assert "1 dead notification(s) put back to pending" in out
    assert (get_row(sessions, one).status, get_row(sessions, two).status) == ("pending", "dead")


@pytest.mark.parametrize("problem", ["not-dead", "unknown", "not-a-uuid"])
def test_retry_dead_with_bad_ids_changes_nothing(
    problem: str,
    cli_db: str,
    sessions: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An id that is not dead, unknown, or not a UUID: exit 2, the message names it, and the
    valid dead id given alongside is not revived either."""
    dead = add_notification(sessions)
    kill(sessions, dead)
    bad = {
        "not-dead": str(add_notification(sessions)),
        "unknown": str(uuid.uuid4()),
        "not-a-uuid": "42",
    }[problem]

    code, _, err = run(capsys, "notifications", "retry-dead", "--id", str(dead), "--id", bad)

    assert code == 2
    assert bad in err
    assert get_row(sessions, dead).status == "dead"


# --- tail ---------------------------------------------------------------------------------------


def message(n: int) -> dict[str, Any]:
    return build_message(
        notification_id=uuid.uuid4(),
        user_guid="USR-1",
        member_guid=f"MBR-{n}",
        institution_code="mxbank_oauth",
        reason="expired",
        oauth_window_uri=f"https://int-widgets.moneydesktop.com/oauth/predirect_to/x/token-{n}",
        generated_at=NOW,
        episode=1,
        reminder=0,
        skip_aggregation=False,
        channel="BROWSER",
    )


@pytest.fixture
def tail_env(sqlite_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REAUTH_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("REAUTH_REDIS_URL", redis_url)
    monkeypatch.setenv("REAUTH_NOTIFY_STREAM", STREAM)
    return redis_url


@pytest.mark.redis
def test_tail_from_start_prints_count_messages_as_redacted_json(
    tail_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tail --from-start --count 2 --json`` prints the first two entries, one JSON per line,
    with the URI replaced by its fingerprint, and exits 0."""
    sink = RedisStreamSink.from_url(tail_env, stream=STREAM, maxlen=100)
    sent = [message(i) for i in range(3)]
    sink.deliver(sent)
    sink.close()

    code, out, _ = run(
        capsys, "notifications", "tail", "--from-start", "--count", "2", "--timeout", "5", "--json"
    )

    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [m["id"] for m in lines] == [m["id"] for m in sent[:2]]
    assert all(m["stream_id"] for m in lines)
    assert "token-" not in out


@pytest.mark.redis
def test_tail_follows_new_messages_only(tail_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --from-start, tail skips what is already on the stream and prints what arrives
    while it runs; --timeout bounds the run."""
    sink = RedisStreamSink.from_url(tail_env, stream=STREAM, maxlen=100)
    sink.deliver([message(0)])
    stop = threading.Event()

    def producer() -> None:
        n = 1
        while not stop.wait(0.05):
            sink.deliver([message(n)])
            n += 1

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        code, out, _ = run(capsys, "notifications", "tail", "--count", "1", "--timeout", "5")
    finally:
        stop.set()
        thread.join()
        sink.close()

    assert code == 0
    assert "member=MBR-0 " not in out
    assert "member=MBR-" in out
    assert "link=https://int-widgets.moneydesktop.com/…#" in out


@pytest.mark.redis
def test_tail_timeout_ends_a_quiet_stream(
    tail_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing arrives: tail returns after --timeout with exit 0 and no output."""
    started = time.monotonic()
    code, out, _ = run(capsys, "notifications", "tail", "--timeout", "0.3")
    assert code == 0
    assert out == ""
    assert 0.25 <= time.monotonic() - started < 3


def test_tail_without_redis_is_a_configuration_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No REAUTH_REDIS_URL: exit 2 naming the variable."""
    monkeypatch.setenv("REAUTH_DATABASE_URL", sqlite_url)
    code, _, err = run(capsys, "notifications", "tail", "--timeout", "1")
    assert code == 2
    assert "REAUTH_REDIS_URL" in err


@pytest.mark.redis
def test_tail_on_unreachable_redis_fails_cleanly(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis down: one error line and exit 1, not a traceback."""
    monkeypatch.setenv("REAUTH_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("REAUTH_REDIS_URL", "redis://127.0.0.1:1/0")
    code, _, err = run(capsys, "notifications", "tail", "--timeout", "1")
    assert code == 1
    assert "redis" in err.lower()
    assert "Traceback" not in err
