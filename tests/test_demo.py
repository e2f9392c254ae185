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

    _check_funnel(first, tmp_path, capsys)

    second = _demo(capsys)
    # Nobody clicks twice: the funnel is what the first run left.
    assert second["funnel"]["people"]["complete"] == 0  # type: ignore[index]
    assert second["funnel"]["funnel"] == first["funnel"]["funnel"]  # type: ignore[index]
    assert second["summary"]["notifications_created_now"] == 0  # type: ignore[index]
    assert second["summary"]["mx_calls"] == 0  # type: ignore[index]
    assert len((tmp_path / "notifications.jsonl").read_text().splitlines()) == notified


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
            assert counts["confirmed"] == people["complete"]
            assert n(Episode.result == "CANCELLED") == people["abandon"]
            assert summary["outcomes"]["reconnected"] == people["complete"]
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
