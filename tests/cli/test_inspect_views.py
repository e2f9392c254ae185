"""``reauth status`` / ``history`` / ``unpause-mx`` as a person reads them: aligned tables with
ISO times and ages, hints exactly when something is stuck, no Python reprs, no terminal escapes."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import update

from models import Notification
from tests.pipeline_helpers import cli
from worker.cli.views import render_history, render_status
from worker.clock import utc_now
from worker.store import locks
from worker.store.db import make_engine, session_factory, session_scope

NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)


def _text(parts: list[object]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=160, highlight=False, markup=False, color_system=None)
    for p in parts:
        console.print(p)
    return re.sub(" +", " ", out.getvalue())  # alignment is rich's job: compare the words


def test_status_rendering_with_a_fixed_now() -> None:
    result = {
        "members": {"idle/-": 40, "gave_up/expired": 12, "pending/expired": 3},
        "members_total": 55,
        "outbox": {"pending": 2, "sent": 38, "dead": 1, "canceled": 0},
        "outbox_oldest_pending_at": "2026-11-30T07:00:00+00:00",
        "gave_up": 12,
        "mx_paused": {"why": "MxUnauthorized [link=x] \x1b[31m", "until": "2026-11-30T08:04:00"},
        "last_scan": {
            "trigger": "beat", "started_at": "2026-11-30T07:56:00+00:00",
            "finished_at": "2026-11-30T07:56:02+00:00", "duration_s": 2.04, "claimed": 3,
            "batches": 1, "skipped_lock": False, "interrupted": False,
        },
    }  # fmt: skip
    text = _text(list(render_status(result, NOW, scan_interval=timedelta(minutes=5))))
    assert "messages one per member and reminder" in text
    assert "2026-11-30T07:56:00Z (4 min ago) by beat" in text
    assert "PAUSED until 2026-11-30T08:04:00Z (in 4 min)" in text
    assert "oldest pending 2026-11-30T07:00:00Z (60 min ago)" in text
    assert "3 members in 1 batches" in text
    assert "2.0 s" in text
    # the note is data: shown literally, its escape replaced, never interpreted
    assert "MxUnauthorized [link=x] \N{REPLACEMENT CHARACTER}[31m" in text
    assert "\x1b" not in text
    for hint in (
        "reauth unpause-mx --why",
        "reauth notifications retry-dead",
        "2 notification(s) wait in the outbox",
        "reauth rerun --reason expired --force",
    ):
        assert hint in text, hint
    assert "{'" not in text


def test_status_says_how_messages_are_grouped_and_the_days_funnel() -> None:
    result = {
        "members": {"awaiting_user/revoked": 3}, "members_total": 3,
        "outbox": {"pending": 2, "sent": 1, "dead": 0, "canceled": 0},
        "outbox_oldest_pending_at": "2026-11-30T07:57:00+00:00", "gave_up": 0, "mx_paused": None,
        "notify_grouping": {"mode": "user", "window_s": 300},
        "funnel_24h": {"detected": 1200, "link": 1190, "notified": 1180, "clicked": 400,
                       "opened": 0, "result": 350, "confirmed": 300, "aggregated": 290},
        "last_scan": None,
    }  # fmt: skip
    text = _text(list(render_status(result, NOW, scan_interval=timedelta(minutes=5))))
    assert "one per person (reauth.oauth_links); pending rows wait up to 5 min" in text
    assert "funnel, 24 h detected 1,200 → notified 1,180 → clicked 400 → confirmed 300" in text


def test_history_rendering_with_a_fixed_now() -> None:
    result = {
        "member": {"member_guid": "MBR-a", "state": "awaiting_user", "episode": 1,
                   "next_attempt_at": datetime(2026, 12, 1, 7, 0), "last_error": None},
        "events": [
            {"at": datetime(2026, 11, 30, 7, 56, tzinfo=UTC), "kind": "notification",
             "id": "n-1", "status": "sent", "attempts": 1,
             "sent_at": datetime(2026, 11, 30, 7, 57, tzinfo=UTC)},
        ],
    }  # fmt: skip
    text = _text(list(render_history(result, NOW)))
    assert "next attempt at 2026-12-01T07:00:00Z (in 23 h)" in text
    assert "last error -" in text
    assert "2026-11-30T07:56:00Z │ 4 min ago │ notification" in text
    assert "sent_at=2026-11-30T07:57:00Z (3 min ago)" in text
    assert "datetime.datetime" not in text


def test_status_history_and_unpause_through_the_cli(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "m.jsonl"
    row = {"member_guid": "MBR-a", "user_guid": "USR-a", "institution_code": "chase",
           "is_oauth": True, "connection_status": "EXPIRED"}  # fmt: skip
    f.write_text(json.dumps(row) + "\n")
    assert cli(capsys, "members", "import", str(f), "--json")[0] == 0
    assert cli(capsys, "scan", "--inline", "--json")[0] == 0

    code, text = cli(capsys, "status")
    assert code == 0
    assert "nothing stuck" in text
    assert "what to do next" not in text
    assert "{'" not in text
    assert "datetime.datetime" not in text
    assert re.search(r"last scan +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \((now|\d+ s ago)\) by cli", text)

    engine = make_engine(env)
    try:
        with session_scope(session_factory(engine)) as s:
            locks.pause_mx(s, until=utc_now() + timedelta(minutes=10), why="MxUnauthorized: 401")
        with engine.begin() as conn:
            conn.execute(update(Notification).values(status="dead"))
    finally:
        engine.dispose()
    code, text = cli(capsys, "status")
    assert "PAUSED until" in text
    assert "(in 10 min)" in text
    assert "MxUnauthorized: 401" in text
    assert "reauth unpause-mx" in text
    assert "1 notification(s) are dead" in text
    code, doc = cli(capsys, "status", "--json")
    assert doc["mx_paused"]["why"] == "MxUnauthorized: 401"
    assert doc["outbox"]["dead"] == 1
    assert doc["notify_grouping"] == {"mode": "member", "window_s": 0}
    assert doc["funnel_24h"]["detected"] == 1  # the scan opened MBR-a's episode
    assert doc["funnel_24h"]["link"] == 1

    code, doc = cli(capsys, "unpause-mx", "--why", "rotated the key", "--json")
    assert (code, doc) == (0, {"lifted": True, "was": "MxUnauthorized: 401"})
    code, doc = cli(capsys, "status", "--json")
    assert doc["mx_paused"] is None
    code, text = cli(capsys, "unpause-mx", "--why", "again")
    assert "not paused" in text

    code, text = cli(capsys, "history", "MBR-a")
    assert code == 0
    assert "datetime.datetime" not in text
    assert "{'" not in text
    assert "attempt" in text
    assert "notification" in text
    assert "unpause-mx" not in text
    # The funnel path is part of the member's history.
    assert re.search(r"│ +funnel +│ +stage=detected +episode=1 .*how=scan", text)
    code, doc = cli(capsys, "history", "MBR-a", "--json")
    stages = [e["stage"] for e in doc["events"] if e["kind"] == "funnel"]
    assert stages[:2] == ["detected", "link"]
    (note,) = [e for e in doc["events"] if e["kind"] == "notification"]
    assert note["group_id"] is None  # member grouping: no grouped message
    assert re.search(r"\d\dZ +│ +(now|\d+ s ago) +│ +attempt", text)
