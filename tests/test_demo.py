"""`reauth demo` on embedded defaults: no PostgreSQL, Redis or broker configured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli import main


def _demo(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    main(["demo", "--json"])
    return dict(json.loads(capsys.readouterr().out))


def test_demo_covers_every_branch_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo (SQLite in the working directory, in-process sandbox, file sink) exercises every
    reason, skip_aggregation branch and channel; a second run creates no notification."""
    first = _demo(capsys)
    rows = first["rows"]
    assert isinstance(rows, list)
    called = [r for r in rows if not r["outcome"].startswith("no call")]
    assert {r["reason"] for r in called} == {"expired", "revoked", "abandoned"}
    assert {r["why"] for r in called} == {
        "stale_data",
        "aggregation_in_progress",
        "recently_aggregated",
        "disabled_by_config",
    }
    assert {r["channel"] for r in called} == {"BROWSER", "APP"}
    assert {r["outcome"] for r in called} == {"success", "not_oauth_capable", "member_not_found"}
    summary = first["summary"]
    assert isinstance(summary, dict)
    notified = summary["notifications_created_now"]
    assert notified == sum(r["outcome"] == "success" for r in called)
    assert first["backends"]["database"].startswith("sqlite")  # type: ignore[index]
    lines = (tmp_path / "notifications.jsonl").read_text().splitlines()
    assert len(lines) == notified

    second = _demo(capsys)
    assert second["summary"]["notifications_created_now"] == 0  # type: ignore[index]
    assert second["summary"]["mx_calls"] == 0  # type: ignore[index]
    assert len((tmp_path / "notifications.jsonl").read_text().splitlines()) == notified
