"""The funnel report as a person sees it: the ``--html`` file and ``/ops/report`` opened in
Chromium on seeded episodes; every number read off the page matches ``reauth report --json``.
Screenshots: test-output/screenshots/report-*.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.funnel_helpers import seed
from tests.pipeline_helpers import cli
from tests.web.browser_helpers import shot
from worker.clock import utc_now
from worker.config import load_settings
from worker.runtime import Runtime
from worker.serving import serve_in_thread
from worker.web.ops import create_ops_app

pytestmark = pytest.mark.browser

USER, PASSWORD = "oncall", "correct horse battery"


@pytest.fixture
def ops_url(db_url: str) -> Iterator[str]:
    rt = Runtime(load_settings(database_url=db_url, ops_port=1, ops_username=USER,
                               ops_password=PASSWORD))  # fmt: skip
    try:
        seed(rt.engine, utc_now())
        with serve_in_thread(create_ops_app(rt), name="ops", lifespan="off") as port:
            yield f"http://127.0.0.1:{port}/ops/report"
    finally:
        rt.close()


def _num(text: str) -> int:
    return int(text.strip().replace(",", ""))


def _read_page(page: Any) -> dict[str, Any]:
    """The numbers a person reads on the page."""
    funnel = {
        g.get_attribute("data-stage"): _num(g.locator("tspan.count").text_content() or "")
        for g in page.locator("#funnel g[data-stage]").all()
    }
    groups = {
        row.get_attribute("data-group"): {
            td.get_attribute("data-k"): td.inner_text() for td in row.locator("td[data-k]").all()
        }
        for row in page.locator("tr[data-group]").all()
    }
    alerts = [
        r.get_attribute("data-institution") for r in page.locator("tr[data-institution]").all()
    ]
    cards = {
        c.get_attribute("data-card"): c.locator("b").inner_text()
        for c in page.locator("[data-card]").all()
    }
    outcomes = {
        r.get_attribute("data-outcome"): _num(r.locator("td.num").inner_text())
        for r in page.locator("tr[data-outcome]").all()
    }
    return {"funnel": funnel, "groups": groups, "alerts": alerts, "cards": cards,
            "outcomes": outcomes}  # fmt: skip


def _check(seen: dict[str, Any], data: dict[str, Any]) -> None:
    overall = data["overall"]
    assert seen["funnel"] == {r["stage"]: r["count"] for r in overall["funnel"]}
    assert [a["institution"] for a in data["alerts"]] == seen["alerts"]
    assert seen["alerts"] == ["<b>bad&bank</b>"]  # shown as text, not markup
    detected = overall["funnel"][0]["count"]
    confirmed = next(r["count"] for r in overall["funnel"] if r["stage"] == "confirmed")
    assert _num(seen["cards"]["detected"]) == detected
    assert _num(seen["cards"]["confirmed"]) == confirmed
    assert seen["cards"]["conversion"] == f"{confirmed / detected * 100:.1f}%"
    times = overall["time_to_reconnect"]
    assert seen["cards"]["p50"] == f"{times['p50_hours']:.1f} h"
    assert seen["cards"]["p90"] == f"{times['p90_hours']:.1f} h"
    for name, n in overall["outcomes"].items():
        assert seen["outcomes"][name] == n
    assert seen["outcomes"]["open"] == detected - sum(overall["outcomes"].values())
    for g in data["groups"]:
        counts = {r["stage"]: r["count"] for r in g["funnel"]}
        shown = seen["groups"][g["key"]]
        for stage in ("detected", "notified", "clicked", "opened", "result", "confirmed"):
            assert _num(shown[stage]) == counts[stage], (g["key"], stage)


def test_the_report_page_shows_the_json_numbers(
    browser: Any,
    *,
    ops_url: str,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REAUTH_DATABASE_URL", db_url)
    page_file = tmp_path / "funnel.html"
    code, data = cli(capsys, "report", "--by", "institution", "--json", "--html", str(page_file))
    assert code == 0, data
    # The file, opened from disk with no server and no JavaScript.
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1100, "height": 900}
    )
    requests: list[str] = []
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.as_uri())
    assert requests == [page_file.as_uri()]  # nothing else was fetched
    _check(_read_page(page), data)
    dialect = "pg" if db_url.startswith("postgresql") else "sqlite"
    shot(page, f"report-file-{dialect}")
    context.close()

    # The same page from the ops listener, with Basic credentials.
    context = browser.new_context(
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1100, "height": 900},
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    response = page.goto(f"{ops_url}?by=institution")
    assert response is not None
    assert response.status == 200
    _check(_read_page(page), data)
    # The CSP allowed the nonce'd styles: no violation was reported, and the cards are laid out.
    assert errors == []
    assert (
        page.locator("[data-card]").first.evaluate("e => getComputedStyle(e).borderRadius") == "8px"
    )
    shot(page, f"report-ops-{dialect}")
    context.close()

    # Without credentials: 401 and no numbers (Chromium itself refuses to show a page that
    # asks for credentials it does not have, so the browser context's request client is used).
    context = browser.new_context()
    answer = context.request.get(ops_url)
    assert answer.status == 401
    assert 'id="funnel"' not in answer.text()
    context.close()
