"""One message per person through the real pipeline (scan → regenerate → outbox → refresh →
relay → file sink), on SQLite and PostgreSQL, against the MX sandbox.

The relay-level rules are pinned in tests/notify/test_grouping_relay.py; this pins that they
hold end to end: the scan's rows are held for the window, a stale link is refreshed through MX
before its group goes out, and a rerun of the scan and the delivery adds no member twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from models import Member, Notification
from tests.pipeline_helpers import make_settings, populate, scan_now
from worker.clock import utc_now
from worker.config import NotifyGrouping
from worker.core.contract import format_time
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.service import actions
from worker.service.deliver import deliver

WINDOW = timedelta(minutes=5)


@pytest.fixture
def grouped(db_url: str, sandbox: RunningSandbox) -> Iterator[Runtime]:
    settings = make_settings(db_url, sandbox).model_copy(
        update={"notify_grouping": NotifyGrouping.USER, "grouping_window": WINDOW}
    )
    rt = Runtime(settings, inline=True)
    yield rt
    rt.close()


def delivered(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_user_gets_one_message_with_a_refreshed_link_and_nothing_twice(
    grouped: Runtime, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    rt = grouped
    out = tmp_path / "notifications.jsonl"  # the file sink's default, in the test's cwd
    start = utc_now()
    populate(rt.engine, 14, start)
    with rt.sessions.begin() as s:
        s.execute(update(Member).values(user_guid="USR-ONE"))

    scan_now(rt, trigger="test")  # inline: the relay runs after the commit, and holds the rows
    with rt.engine.connect() as conn:
        rows = conn.execute(select(Notification.id, Notification.payload)).all()
    assert len(rows) >= 3
    assert delivered(out) == []

    # One link aged past REAUTH_LINK_MAX_AGE while held (e.g. the relay was down).
    aged = start - rt.settings.link_max_age - timedelta(minutes=1)
    with rt.sessions.begin() as s:
        note = s.get(Notification, rows[0].id)
        assert note is not None
        old_uri = note.payload["oauth_window_uri"]
        note.payload = {**note.payload, "generated_at": format_time(aged)}
    calls_before = len(sandbox.requests())

    def later() -> datetime:
        return utc_now() + WINDOW

    result = deliver(rt, clock=later, owner="relay")

    assert (result["refreshed"], result["messages"], result["sent"]) == (1, 1, len(rows))
    assert len(sandbox.requests()) > calls_before
    (message,) = delivered(out)
    assert message["type"] == "reauth.oauth_links"
    assert message["user_guid"] == "USR-ONE"
    assert sorted(m["id"] for m in message["members"]) == sorted(str(r.id) for r in rows)
    refreshed = next(m for m in message["members"] if m["id"] == str(rows[0].id))
    assert refreshed["oauth_window_uri"] != old_uri
    assert all(m["oauth_window_uri"] for m in message["members"])

    # On-call finds the message a member went out in, and its funnel path says notified once.
    with rt.sessions.begin() as s:
        guid = s.scalar(
            select(Member.member_guid)
            .join(Notification, Notification.member_id == Member.id)
            .where(Notification.id == rows[0].id)
        )
        assert guid is not None
        seen = actions.history(s, guid)
        stat = actions.status(s, utc_now(), grouping="user", grouping_window=WINDOW)
    (event,) = [e for e in seen["events"] if e["kind"] == "notification"]
    assert event["group_id"] == message["id"]
    assert [e["stage"] for e in seen["events"] if e["kind"] == "funnel"].count("notified") == 1
    assert stat["notify_grouping"] == {"mode": "user", "window_s": 300}
    assert stat["funnel_24h"]["notified"] == len(rows)

    # Exactly once per member: a second scan queues nothing, a second delivery sends nothing.
    scan_now(rt, trigger="test")
    assert deliver(rt, clock=later, owner="relay")["claimed"] == 0
    with rt.engine.connect() as conn:
        assert conn.execute(select(Notification.status)).scalars().all() == ["sent"] * len(rows)
    assert len(delivered(out)) == 1
