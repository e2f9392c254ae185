"""`reauth members import`, `rerun`, `oauth-result`, `status`, `history` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from models import Attempt, Member, Notification, OpsAction
from tests.pipeline_helpers import cli
from worker.service.importer import MAX_LINE_BYTES, parse
from worker.store.db import make_engine

GOOD = {
    "member_guid": "MBR-a",
    "user_guid": "USR-a",
    "institution_code": "chase",
    "is_oauth": True,
    "connection_status": "EXPIRED",
}


def _jsonl(*rows: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in rows) + b"\n"


# --- the parser (pure) ----------------------------------------------------------------------------


def test_parser_reports_every_bad_row_with_its_line() -> None:
    """Malformed JSON, wrong types, unknown statuses, naive times, unknown fields and duplicate
    guids are each reported with their line number; good rows still parse."""
    data = b"\n".join(
        [
            json.dumps(GOOD).encode(),
            b"{not json",
            json.dumps({**GOOD, "member_guid": "MBR-b", "is_oauth": "maybe"}).encode(),
            json.dumps({**GOOD, "member_guid": "MBR-c", "connection_status": "ASLEEP"}).encode(),
            json.dumps(
                {**GOOD, "member_guid": "MBR-d", "oauth_started_at": "2026-01-01T00:00:00"}
            ).encode(),
            json.dumps({**GOOD, "member_guid": "MBR-e", "colour": "blue"}).encode(),
            json.dumps(GOOD).encode(),
            b"[1, 2]",
            b"\xff\xfe broken utf-8",
            b"x" * (MAX_LINE_BYTES + 1),
            json.dumps({**GOOD, "member_guid": "MBR-f", "channel": "app"}).encode(),
            json.dumps({**GOOD, "member_guid": "MBR-g", "user_id": "u" * 129}).encode(),
        ]
    )
    parsed = parse(data, "jsonl")
    assert [line for line, _ in parsed.rows] == [1, 11]
    errors = {e.line: e.message for e in parsed.errors}
    assert set(errors) == {2, 3, 4, 5, 6, 7, 8, 9, 10, 12}
    assert "user_id: longer than 128" in errors[12]
    assert "not valid JSON" in errors[2]
    assert "is_oauth" in errors[3]
    assert "ASLEEP" in errors[4]
    assert "timezone" in errors[5]
    assert "colour: unknown field" in errors[6]
    assert "duplicate member_guid 'MBR-a' (first on line 1)" in errors[7]
    assert "JSON object" in errors[8]
    assert "invalid UTF-8" in errors[9]
    assert "longer than" in errors[10]


def test_csv_parsing() -> None:
    """CSV with a header: booleans and blanks are understood, a short row is reported."""
    data = (
        b"member_guid,user_guid,institution_code,is_oauth,connection_status,oauth_started_at\n"
        b"MBR-1,USR-1,chase,true,DENIED,\n"
        b"MBR-2,USR-2,chase,0,CONNECTED,2026-01-01T00:00:00Z\n"
        b"MBR-3,USR-3,chase\n"
    )
    parsed = parse(data, "csv")
    assert [(line, r.member_guid, r.is_oauth) for line, r in parsed.rows] == [
        (2, "MBR-1", True),
        (3, "MBR-2", False),
    ]
    assert [e.line for e in parsed.errors] == [4]


# --- the CLI ------------------------------------------------------------------------------------


def _count(url: str, model: Any, *where: Any) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(model).where(*where)) or 0)
    finally:
        engine.dispose()


def test_import_strict_writes_nothing_and_lenient_writes_good_rows(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--strict with one bad row writes nothing; without it the good rows are written and the
    bad one reported with its line; the exit code says something was wrong either way."""
    f = tmp_path / "members.jsonl"
    f.write_bytes(_jsonl(GOOD, {**GOOD, "member_guid": "MBR-x", "is_oauth": "perhaps"}))
    code, out = cli(capsys, "members", "import", str(f), "--strict", "--json")
    assert code == 1
    assert out["written"] is False
    assert out["errors"][0]["line"] == 2
    assert _count(env, Member) == 0
    code, out = cli(capsys, "members", "import", str(f), "--json")
    assert code == 1
    assert (out["inserted"], len(out["errors"])) == (1, 1)
    assert _count(env, Member) == 1


def test_import_back_to_connected_ends_the_episode(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A member notified for EXPIRED and then imported as CONNECTED leaves its episode at once;
    a later import as DENIED starts episode 2 on the next scan."""
    f = tmp_path / "m.jsonl"
    f.write_bytes(_jsonl(GOOD))
    assert cli(capsys, "members", "import", str(f), "--json")[0] == 0
    code, out = cli(capsys, "scan", "--inline", "--json")
    assert (code, out["claimed"]) == (0, 1)
    assert _count(env, Notification) == 1
    f.write_bytes(_jsonl({**GOOD, "connection_status": "CONNECTED"}))
    code, out = cli(capsys, "members", "import", str(f), "--json")
    assert (code, out["updated"], out["episodes_closed"]) == (0, 1, 1)
    f.write_bytes(_jsonl({**GOOD, "connection_status": "DENIED"}))
    cli(capsys, "members", "import", str(f), "--json")
    cli(capsys, "scan", "--inline", "--json")
    code, hist = cli(capsys, "history", "MBR-a", "--json")
    keys = [e["idempotency_key"] for e in hist["events"] if e["kind"] == "notification"]
    assert keys == ["MBR-a:1:1", "MBR-a:2:1"]


def test_oauth_success_stops_reminders_and_rerun_is_audited(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """oauth-result success ends the episode (no more reminders even when forced); rerun --force
    sends the next reminder early, once, and every action lands in ops_actions with actor/why."""
    f = tmp_path / "m.jsonl"
    f.write_bytes(_jsonl(GOOD, {**GOOD, "member_guid": "MBR-b"}))
    cli(capsys, "members", "import", str(f))
    cli(capsys, "scan", "--inline", "--json")
    assert _count(env, Notification) == 2

    code, out = cli(
        capsys,
        "rerun",
        "MBR-b",
        "--force",
        "--why",
        "user asked on support",
        "--actor",
        "alice",
        "--inline",
        "--json",
    )
    assert (code, out["claimed"]) == (0, 1)
    assert _count(env, Notification) == 2 + 1  # reminder 2 sent early
    cli(capsys, "rerun", "MBR-b", "--force", "--why", "again", "--inline", "--json")
    assert _count(env, Notification) == 3 + 1  # reminder 3: still one per reminder
    cli(capsys, "rerun", "MBR-b", "--force", "--why", "and again", "--inline", "--json")
    assert _count(env, Notification) == 4  # all reminders sent: nothing new

    code, out = cli(capsys, "oauth-result", "MBR-a", "--status", "success", "--json")
    assert code == 0
    assert out["after"]["state"] == "idle"
    cli(capsys, "rerun", "MBR-a", "--force", "--why", "check", "--inline", "--json")
    assert _count(env, Notification, Notification.member_id.is_not(None)) == 4

    assert _count(env, OpsAction, OpsAction.actor == "alice") == 1
    code, status = cli(capsys, "status", "--json")
    assert code == 0
    assert status["outbox"]["sent"] == 4
    assert status["last_scan"]["claimed"] == 2  # the one scan, of MBR-a and MBR-b
    code, hist = cli(capsys, "history", "MBR-b", "--json")
    kinds = [e["kind"] for e in hist["events"]]
    assert kinds.count("notification") == 3
    assert kinds.count("ops") == 3
    assert _count(env, Attempt) == 4  # 2 scanned + 2 forced reminders; nothing else reached MX


@pytest.mark.parametrize(
    "args",
    [
        ("rerun", "MBR-nope", "--why", "x", "--inline"),
        ("oauth-result", "MBR-nope", "--status", "success"),
        ("history", "MBR-nope"),
    ],
)
def test_unknown_member_is_a_clear_error(
    env: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    """Any command given an unknown guid names it, exits 2 and changes nothing."""
    code, out = cli(capsys, *args)
    assert code == 2
    assert "unknown member guid(s): MBR-nope" in out
    assert _count(env, OpsAction) == 0


def test_bad_arguments_are_clear_errors(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Wrong --reason, --status and --error-reason values are named in the message (exit 2)."""
    assert cli(capsys, "scan", "--dry-run", "--reason", "bored")[0] == 2
    code, out = cli(capsys, "oauth-result", "MBR-a", "--status", "meh")
    assert code == 2
    assert "--status" in out
    assert cli(capsys, "rerun", "--why", "x", "--inline")[0] == 2
    code, out = cli(capsys, "scan")
    assert code == 2
    assert "REAUTH_BROKER_URL" in out


def test_oauth_success_on_an_inbound_member_ends_both_episodes(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Member combination: OAuth started for MBR-a finished on MBR-b. Both episodes end, and
    the audit row names the inbound member."""
    f = tmp_path / "m.jsonl"
    f.write_bytes(_jsonl(GOOD, {**GOOD, "member_guid": "MBR-b"}))
    cli(capsys, "members", "import", str(f))
    cli(capsys, "scan", "--inline", "--json")
    code, out = cli(
        capsys, "oauth-result", "MBR-a", "--status", "success",
        "--inbound-member-guid", "MBR-b", "--json",
    )  # fmt: skip
    assert code == 0
    assert out["combined"] == ["MBR-b"]
    for guid in ("MBR-a", "MBR-b"):
        code, hist = cli(capsys, "history", guid, "--json")
        assert hist["member"]["state"] == "idle"
    code, out = cli(
        capsys, "oauth-result", "MBR-a", "--status", "error", "--inbound-member-guid", "MBR-b"
    )
    assert code == 2
