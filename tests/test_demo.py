"""`reauth demo` on embedded defaults: no PostgreSQL, Redis or broker configured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    # The scan's notifications plus the webhook case's one.
    assert len(lines) == notified + 1

    _check_funnel(first, tmp_path, capsys)

    second = _demo(capsys)
    # Nobody clicks twice: the funnel is what the first run left, plus the second run's
    # webhook member (detected, a link, notified, reconnected through MX's webhooks, no click).
    assert second["funnel"]["people"]["complete"] == 0  # type: ignore[index]
    before, after = first["funnel"]["funnel"], second["funnel"]["funnel"]  # type: ignore[index]
    added = {stage: after[stage] - before[stage] for stage in before}
    assert added == {s: int(s in {"detected", "link", "notified", "confirmed"}) for s in before}
    assert second["summary"]["notifications_created_now"] == 0  # type: ignore[index]
    assert second["summary"]["mx_calls"] == 0  # type: ignore[index]
    # The scan re-notifies nobody; the webhook case's new member adds its one.
    assert len((tmp_path / "notifications.jsonl").read_text().splitlines()) == notified + 2


def _check_funnel(
    result: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's funnel summary matches the database, and `reauth report --html` renders."""
    from sqlalchemy import create_engine, func, select

    from models import Click, Episode

    summary = result["funnel"]
    assert isinstance(summary, dict)
    people, counts = summary["people"], summary["funnel"]
    assert people["complete"] > 0
    assert people["abandon"] > 0
    engine = create_engine(f"sqlite:///{tmp_path / 'reauth.db'}")
    try:
        with engine.connect() as conn:

            def n(*where: object) -> int:
                return int(conn.scalar(select(func.count()).select_from(Episode).where(*where)))

            assert counts["detected"] == n()
            assert counts["notified"] == n(Episode.notified_at.is_not(None))
            assert counts["clicked"] == n(Episode.clicked_at.is_not(None))
            assert counts["confirmed"] == n(Episode.confirmed_at.is_not(None))
            assert counts["clicked"] == people["complete"] + people["abandon"]
            # The people who completed, and the webhook case's member (reconnected in MX).
            assert counts["confirmed"] == people["complete"] + 1
            assert n(Episode.result == "CANCELLED") == people["abandon"]
            assert summary["outcomes"]["reconnected"] == people["complete"] + 1
            presses = conn.scalar(
                select(func.count()).select_from(Click).where(Click.outcome == "minted")
            )
            assert presses == counts["clicked"]
    finally:
        engine.dispose()
    page = tmp_path / "funnel.html"
    main(["report", "--html", str(page), "--json"])
    assert (
        json.loads(capsys.readouterr().out)["overall"]["funnel"][0]["count"] == counts["detected"]
    )
    assert "Re-authentication funnel" in page.read_text()
    assert page.read_text().count("<svg") == 2


def test_demo_serve_keeps_links_clickable(tmp_path: Path) -> None:
    """`reauth demo --serve`: every open episode gets a reconnect_url that the served app shows
    and that, pressed, leads to the sandbox's OAuth window."""
    import httpx

    from tests.e2e.e2e_helpers import free_port
    from worker.config import load_settings
    from worker.demo import run_demo

    port = free_port()
    seen: dict[str, int] = {}

    def click_through(result: dict[str, object]) -> None:
        links = result["links"]
        assert isinstance(links, list)
        assert links
        url = links[0]["reconnect_url"]
        assert url.startswith(f"http://127.0.0.1:{port}/r/")
        seen["page"] = httpx.get(url).status_code
        pressed = httpx.post(url, follow_redirects=False)
        seen["press"] = pressed.status_code
        seen["window"] = httpx.get(pressed.headers["location"]).status_code

    run_demo(load_settings(), serve_port=port, while_serving=click_through)
    assert seen == {"page": 200, "press": 303, "window": 200}


def _hook_facts(tmp_path: Path, guid: str) -> dict[str, Any]:
    """What the database and the file sink hold about the demo's webhook member."""
    from sqlalchemy import create_engine, select

    from models import Attempt, Member, Notification, WebhookEvent

    engine = create_engine(f"sqlite:///{tmp_path / 'reauth.db'}")
    try:
        with engine.connect() as c:
            m = c.execute(select(Member).where(Member.member_guid == guid)).one()
            notes = c.execute(select(Notification).where(Notification.member_id == m.id)).all()
            tried = c.execute(select(Attempt).where(Attempt.member_id == m.id)).all()
            events = c.execute(
                select(WebhookEvent.event_type, WebhookEvent.status, WebhookEvent.note)
                .where(WebhookEvent.member_guid == guid)
                .order_by(WebhookEvent.id)
            ).all()
    finally:
        engine.dispose()
    sink = [
        json.loads(line)
        for line in (tmp_path / "notifications.jsonl").read_text().splitlines()
        if guid in line
    ]
    return {"member": m, "notes": notes, "attempts": tried, "events": events, "sink": sink}


def test_demo_webhook_case_notifies_without_a_scan_and_stops_reminders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's webhook member: the sandbox's DENIED reaches `reauth serve` as MX webhooks
    (204), the member is read from MX and notified by a regenerate batch the apply handed it
    (trigger ``webhook``, no scan attempt), the file sink has its message; the sandbox's
    CONNECTED (a MEMBER webhook) closes the episode and unschedules the reminder. A second run
    breaks a new member (identical bodies within the dedupe window are stored once), so it
    adds exactly one notification and re-notifies nobody."""
    first: dict[str, Any] = _demo(capsys)
    hook = first["webhook"]
    guid = hook["member"]
    broke, back = hook["steps"]
    assert broke["webhooks"] == ["CONNECTION_STATUS 204", "MEMBER 204"]
    assert (broke["state"], broke["reason"], broke["episode"]) == ("awaiting_user", "revoked", 1)
    assert broke["next_reminder"] != "none"  # a reminder was scheduled while it was broken
    assert back["webhooks"] == ["MEMBER 204"]
    assert (back["state"], back["next_reminder"]) == ("idle", "none")

    facts = _hook_facts(tmp_path, guid)
    m = facts["member"]
    assert (m.reauth_state, m.episode, m.connection_status) == ("idle", 1, "CONNECTED")
    assert m.next_attempt_at is None
    (note,) = facts["notes"]
    assert (note.status, note.idempotency_key) == ("sent", f"{guid}:1:1")
    assert note.payload["reason"] == "revoked"
    # Notified by the webhook path only: every attempt of this member came from the apply.
    assert [a.trigger for a in facts["attempts"]] == ["webhook"]
    assert [(t, s) for t, s, _ in facts["events"]] == [
        ("CONNECTION_STATUS", "applied"),
        ("MEMBER", "applied"),
        ("MEMBER", "applied"),
    ]
    assert "due now" in facts["events"][0][2]
    assert "episode ended" in facts["events"][2][2]
    (message,) = facts["sink"]
    assert message["member_guid"] == guid

    lines = len((tmp_path / "notifications.jsonl").read_text().splitlines())
    second: dict[str, Any] = _demo(capsys)
    assert second["summary"]["notifications_created_now"] == 0
    other = second["webhook"]["member"]
    assert other != guid
    assert second["webhook"]["notifications_created_now"] == 1
    assert len((tmp_path / "notifications.jsonl").read_text().splitlines()) == lines + 1
    assert len(_hook_facts(tmp_path, guid)["notes"]) == 1
