"""The funnel: events written by the real pipeline, and ``reauth report`` on seeded episodes
(numbers, groups, alerts, JSON, HTML, bad input) on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models import Episode, FunnelEvent, Member
from tests.funnel_helpers import expected, seed
from tests.pipeline_helpers import cli
from worker.config import load_settings
from worker.core import funnel
from worker.runtime import Runtime
from worker.service import report
from worker.service.actions import oauth_result
from worker.store.db import session_scope

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def rt(db_url: str) -> Iterator[Runtime]:
    runtime = Runtime(load_settings(database_url=db_url))
    yield runtime
    runtime.close()


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {r["stage"]: r["count"] for r in rows}


def test_report_numbers_match_the_seeded_paths(rt: Runtime) -> None:
    chosen = seed(rt.engine, NOW)
    want = expected(chosen)
    data = report.build(rt, since="30d", now=NOW)
    got = _counts(data["overall"]["funnel"])
    assert {k: got[k] for k in want["stages"]} == want["stages"]
    assert got["aggregated"] == 0
    assert data["overall"]["outcomes"] == {
        o.value: want["outcomes"].get(o.value, 0) for o in funnel.Outcome
    }
    minutes = want["reconnect_minutes"]
    hist = {m: minutes.count(m) for m in minutes}
    times = data["overall"]["time_to_reconnect"]
    assert times["reconnected"] == len(minutes)
    assert times["p50_hours"] == round(funnel.percentile(hist, 0.5) / 60, 2)  # type: ignore[operator]
    assert times["p90_hours"] == round(funnel.percentile(hist, 0.9) / 60, 2)  # type: ignore[operator]
    assert data["converting_reminder"] == dict(sorted(want["converting"].items()))
    curve = data["overall"]["curve"]
    assert curve[0] == [0.0, 0.0]
    assert curve[-1][1] == round(len(minutes) / len(chosen), 4)
    # The bank whose OAuth fails for most people is the one alert.
    assert [a["institution"] for a in data["alerts"]] == ["<b>bad&bank</b>"]


def test_report_by_institution_and_window(rt: Runtime) -> None:
    chosen = seed(rt.engine, NOW)
    data = report.build(rt, since="30d", by="institution", now=NOW)
    by_key = {g["key"]: _counts(g["funnel"]) for g in data["groups"]}
    assert set(by_key) == {p.institution for p in chosen}
    for inst, counts in by_key.items():
        mine = [p for p in chosen if p.institution == inst]
        assert counts["detected"] == len(mine)
        assert counts["confirmed"] == sum(p.confirmed_after_h is not None for p in mine)
    by_reminder = report.build(rt, since="30d", by="reminder", now=NOW)
    assert {g["key"] for g in by_reminder["groups"]} == {str(p.reminders) for p in chosen}
    # Episodes are seeded over the last 10 days: a 2-day window sees about a fifth of them.
    recent = _counts(report.build(rt, since="2d", now=NOW)["overall"]["funnel"])
    assert 0 < recent["detected"] < len(chosen) / 3


def test_report_cli_json_and_html_escape_every_value(
    env: str, engine: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seed(engine, datetime.now(UTC))
    page = tmp_path / "funnel.html"
    code, data = cli(capsys, "report", "--by", "institution", "--json", "--html", str(page))
    assert code == 0, data
    html = page.read_text()
    assert "<b>bad&bank</b>" not in html
    assert "&lt;b&gt;bad&amp;bank&lt;/b&gt;" in html
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)  # nothing external
    assert html.count("<svg") == 2
    detected = _counts(data["overall"]["funnel"])["detected"]
    assert f"<b>{detected:,}</b>" in html
    code, text = cli(capsys, "report", "--by", "reason")
    assert code == 0
    assert "Funnel: episodes detected in the last 30d" in text
    assert "bad&bank" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "30"], "--since '30': expected a whole number and a unit"),
        (["--since", "-1d"], "--since '-1d'"),
        (["--by", "bank"], "--by 'bank': expected one of reason, institution, channel, reminder"),
        (["--html", "/nonexistent-dir/x.html"], "--html '/nonexistent-dir/x.html'"),
    ],
)
def test_report_bad_input_is_a_clear_error(
    env: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out = cli(capsys, "report", *args)
    assert code == 2
    assert message in out


def test_the_pipeline_records_the_funnel(
    env: str, engine: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Import → scan (detected, link) → relay (notified) → OAuth success (result, confirmed):
    the events and the summary row come from the real writers."""
    f = tmp_path / "m.jsonl"
    guid = f"MBR-fun-{uuid.uuid4().hex[:6]}"
    row = {"member_guid": guid, "user_guid": "USR-fun", "institution_code": "chase",
           "is_oauth": True, "connection_status": "EXPIRED"}  # fmt: skip
    f.write_text(json.dumps(row) + "\n")
    assert cli(capsys, "members", "import", str(f), "--json")[0] == 0
    code, out = cli(capsys, "scan", "--inline", "--json")
    assert code == 0, out
    code, out = cli(capsys, "notifications", "deliver", "--json")
    with engine.connect() as conn:
        mid = conn.scalar(select(Member.id).where(Member.member_guid == guid))
        stages = list(
            conn.scalars(select(FunnelEvent.stage).where(FunnelEvent.member_id == mid)
                         .order_by(FunnelEvent.id))
        )  # fmt: skip
    assert stages[:3] == ["detected", "link", "notified"]
    rt = Runtime(load_settings(database_url=env))
    try:
        with session_scope(rt.sessions) as s:
            oauth_result(s, member_guid=guid, status="success", error_reason=None,
                         now=datetime.now(UTC), actor="test")  # fmt: skip
    finally:
        rt.close()
    with engine.connect() as conn:
        ep = conn.execute(select(Episode).where(Episode.member_id == mid)).one()
    assert ep.reason == "expired"
    assert ep.detected_how == "scan"
    assert ep.institution_code == "chase"
    assert ep.reminders_sent == 1
    assert ep.result == "success"
    assert ep.outcome == "reconnected"
    assert ep.converting_reminder == 1
    assert ep.link_at is not None
    assert ep.notified_at is not None
    assert ep.confirmed_at is not None
    assert ep.aggregated_at is None
    # MX's next export says it aggregated after the reconnection: the funnel's last stage.
    aggregated_at = datetime.now(UTC)
    f.write_text(
        json.dumps(
            {
                **row,
                "connection_status": "CONNECTED",
                "successfully_aggregated_at": aggregated_at.isoformat(),
            }
        )
        + "\n"
    )
    assert cli(capsys, "members", "import", str(f), "--json")[0] == 0
    with engine.connect() as conn:
        ep = conn.execute(select(Episode).where(Episode.member_id == mid)).one()
        stages = list(conn.scalars(select(FunnelEvent.stage).where(FunnelEvent.member_id == mid)))
    assert ep.aggregated_at == aggregated_at
    assert stages.count("aggregated") == 1
    # The same export again records nothing new.
    f.write_text(
        json.dumps(
            {
                **row,
                "connection_status": "CONNECTED",
                "successfully_aggregated_at": aggregated_at.isoformat(),
            }
        )
        + "\n"
    )
    assert cli(capsys, "members", "import", str(f), "--json")[0] == 0
    with engine.connect() as conn:
        again = list(conn.scalars(select(FunnelEvent.stage).where(FunnelEvent.member_id == mid)))
    assert again == stages
