"""``reauth webhooks list|replay|stats`` over a real inbox (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert, select, update

from models import Member, WebhookEvent
from tests.pipeline_helpers import cli
from worker.clock import utc_now
from worker.config import get_settings
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.service import webhooks


def _seed(db_url: str) -> None:
    rt = Runtime(get_settings())
    try:
        with rt.engine.begin() as conn:
            conn.execute(insert(Member).values(
                member_guid="MBR-cli", user_guid="USR-1", institution_code="mxbank",
                is_oauth=True, connection_status="CONNECTED", reauth_state="idle",
                channel="BROWSER",
            ))  # fmt: skip
        doc = {"type": "CONNECTION_STATUS", "action": "CHANGED", "member_guid": "MBR-cli",
               "user_guid": "USR-1", "connection_status": "DENIED"}  # fmt: skip
        webhooks.intake(rt, json.dumps(doc).encode(), None, utc_now())
        webhooks.intake(rt, json.dumps(doc).encode(), None, utc_now())  # a duplicate
        webhooks.intake(rt, b"nope", "MEMBER", utc_now())
        with rt.engine.begin() as conn:  # as if MX could not be read every time
            conn.execute(update(WebhookEvent).where(WebhookEvent.status == "pending")
                         .values(status="failed", note="MX read failed"))  # fmt: skip
    finally:
        rt.close()


def test_list_stats_and_replay(
    env: str, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(env)
    sandbox.sandbox.set_member_state("MBR-cli", connection_status="DENIED")
    capsys.readouterr()  # the seeding's own log lines
    code, out = cli(capsys, "webhooks", "list", "--json")
    assert code == 0
    assert [(e["status"], e["duplicates"]) for e in out["events"]] == [
        ("rejected", 0),
        ("failed", 1),
    ]
    assert "body" not in out["events"][0]
    code, out = cli(capsys, "webhooks", "list", "--status", "rejected", "--body", "--json")
    assert [e["body"] for e in out["events"]] == ["nope"]
    code, out = cli(capsys, "webhooks", "stats", "--json")
    assert code == 0
    assert out["by_type"] == {"CONNECTION_STATUS": {"failed": 1}, "MEMBER": {"rejected": 1}}
    assert out["duplicates"] == 1
    code, text = cli(capsys, "webhooks", "replay")
    assert code == 2
    assert "give --id, --status or --since" in text
    code, out = cli(capsys, "webhooks", "replay", "--status", "failed", "--inline", "--json")
    assert code == 0
    assert out["replayed"] == 1
    assert out["applied"]["applied"] == 1
    assert out["applied"]["regenerated"] == 1
    rt = Runtime(get_settings())
    try:
        with rt.sessions() as s:
            assert s.scalar(select(Member.reauth_state)) == "awaiting_user"
            statuses = sorted(s.scalars(select(WebhookEvent.status)))
            assert statuses == ["applied", "rejected"]
    finally:
        rt.close()
    code, _ = cli(capsys, "webhooks", "list", "--status", "bogus")
    assert code == 2
    code, _ = cli(capsys, "webhooks", "stats", "--since", "forever")
    assert code == 2
    code, text = cli(capsys, "webhooks", "list")
    assert code == 0
    assert "MBR-cli" in text


def test_forget_deletes_the_members_webhook_events(
    env: str, sandbox: RunningSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(env)
    capsys.readouterr()
    code, out = cli(capsys, "forget", "--member", "MBR-cli", "--why", "asked", "--json")
    assert code == 0, out
    assert out["webhook_events"] == 1
    code, out = cli(capsys, "webhooks", "list", "--json")
    assert [e["member_guid"] for e in out["events"]] == [None]  # the rejected body named nobody
