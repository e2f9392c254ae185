"""The command line under careless use and hostile data: usage errors, markup and escapes in
data, outages, faults that stop a scan, Ctrl-C. Every case ends in one clear line and the right
exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from models import Member, ScanRun
from tests.pipeline_helpers import cli, populate
from worker.clock import utc_now
from worker.runtime import Runtime
from worker.service.scan import run_scan
from worker.store.db import make_engine


@pytest.mark.parametrize(
    "argv",
    [
        ["rerun", "MBR-1"],  # --why missing
        ["scan", "--limit", "0"],
        ["scan", "--no-such-option"],
        ["status", "unexpected-argument"],
    ],
)
def test_usage_errors_exit_2_with_clicks_message(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: Any
) -> None:
    """Typer raises the errors of its own copy of click; they exit 2 with a usage message."""
    monkeypatch.setenv("REAUTH_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    code, out = cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in str(out)
    assert "Usage:" in str(out) or "Error" in str(out)


HOSTILE = ["MBR-x[/]", "MBR-[link=https://evil.example]click[/link]", "MBR-\x1b[31mred\x1b[0m"]


@pytest.mark.parametrize("guid", HOSTILE)
def test_markup_and_escapes_in_data_are_printed_as_text(
    guid: str, env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A guid with rich markup or an ANSI escape neither crashes `scan --dry-run` and `history`
    nor reaches the terminal as markup or escape codes."""
    populate_engine = make_engine(env)
    try:
        populate(populate_engine, 1, utc_now())
        with populate_engine.begin() as conn:
            conn.execute(update(Member).values(member_guid=guid))
    finally:
        populate_engine.dispose()
    for argv in (["scan", "--dry-run"], ["history", guid]):
        code, out = cli(capsys, *argv)
        assert code == 0, out
        assert "\x1b" not in out
        assert "Traceback" not in out
        shown = guid.replace("\x1b", "\N{REPLACEMENT CHARACTER}")
        assert shown in out or repr(shown)[1:-1] in out  # the table, or the member dict


def test_database_not_migrated_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("REAUTH_DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    code, out = cli(capsys, "status")
    assert code == 1
    assert "not migrated" in out
    assert "reauth db upgrade" in out
    assert "Traceback" not in out


def test_database_down_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    """PostgreSQL on a port nobody listens on: one line naming the database, exit 1."""
    monkeypatch.setenv(
        "REAUTH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
    )
    monkeypatch.setenv("REAUTH_MX_CLIENT_ID", "client")
    monkeypatch.setenv("REAUTH_MX_API_KEY", "key-key-key")
    for argv in (["status"], ["scan", "--inline"]):
        code, out = cli(capsys, *argv)
        assert code == 1, out
        assert "database unreachable" in out
        assert "Traceback" not in out


def test_inline_scan_that_reaches_no_mx_fails(
    env: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """MX unreachable: every member fails transiently, so the scan exits 1 and says why."""
    engine = make_engine(env)
    try:
        populate(engine, 14, utc_now())
    finally:
        engine.dispose()
    monkeypatch.setenv("REAUTH_MX_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("REAUTH_MX_SSO_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("REAUTH_MX_TIMEOUT", "2")
    from worker.config import get_settings

    get_settings.cache_clear()
    code, out = cli(capsys, "scan", "--inline")
    assert code == 1, out
    assert "no member processed" in str(out)


def test_interrupted_scan_releases_its_page_and_is_recorded(runtime: Runtime) -> None:
    """Ctrl-C while a page is being processed: its claims are released at once (not held for a
    lease) and the scan is recorded as interrupted."""
    populate(runtime.engine, 5, utc_now())

    def interrupted(ids: list[int], owner: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scan(runtime, interrupted, clock=utc_now, trigger="cli")
    with runtime.engine.connect() as conn:
        held = conn.execute(select(Member.id).where(Member.claim_owner.is_not(None))).all()
        run = conn.execute(select(ScanRun.interrupted, ScanRun.trigger)).one()
    assert held == []
    assert tuple(run) == (True, "cli")


@pytest.mark.parametrize(
    "argv", [["scan", "--inline"], ["rerun", "MBR-1", "--why", "x", "--inline"]]
)
def test_commands_that_call_mx_need_credentials(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: Any
) -> None:
    """No MX client id or key: one message naming both variables, exit 2, before any work."""
    monkeypatch.setenv("REAUTH_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    code, out = cli(capsys, *argv)
    assert code == 2
    assert "REAUTH_MX_CLIENT_ID" in out
    assert "REAUTH_MX_API_KEY" in out
