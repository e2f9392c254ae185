"""The fleet gauges a scan refreshes: MX pause, outbox backlog and dead rows, gave-up members."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from models import Member, Notification
from tests.pipeline_helpers import cli
from worker.clock import utc_now
from worker.store import locks
from worker.store.db import make_engine, session_factory, session_scope


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_scan_exports_pause_backlog_dead_and_gave_up(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "m.jsonl"
    rows = [
        {"member_guid": f"MBR-{i}", "user_guid": f"USR-{i}", "institution_code": "chase",
         "is_oauth": True, "connection_status": "EXPIRED"}
        for i in range(3)
    ]  # fmt: skip
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(capsys, "members", "import", str(f), "--json")[0] == 0
    assert cli(capsys, "scan", "--inline", "--json")[0] == 0
    engine = make_engine(env)
    try:
        with engine.begin() as conn:
            ids = sorted(conn.scalars(update(Notification).values(status="pending")
                                      .returning(Notification.id)))  # fmt: skip
            conn.execute(update(Notification).where(Notification.id == ids[0])
                         .values(status="dead"))  # fmt: skip
            conn.execute(update(Member).where(Member.member_guid == "MBR-0")
                         .values(reauth_state="gave_up"))  # fmt: skip
        with session_scope(session_factory(engine)) as s:
            locks.pause_mx(s, until=utc_now() + timedelta(minutes=5), why="MxUnauthorized")
        cli(capsys, "scan", "--inline", "--json")
        assert _gauge("reauth_mx_paused") == 1
        assert _gauge("reauth_outbox_backlog") == 2
        assert _gauge("reauth_outbox_dead") == 1
        assert _gauge("reauth_members_gave_up") == 1
        cli(capsys, "unpause-mx", "--why", "fixed", "--json")
        cli(capsys, "scan", "--inline", "--json")
        assert _gauge("reauth_mx_paused") == 0
    finally:
        engine.dispose()
