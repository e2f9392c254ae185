"""The reconnect pages in a real browser (Playwright + Debian's Chromium).

Each test saves screenshots of the pages it sees (tests/web/browser_helpers.py says where)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.web.browser_helpers import shot
from tests.web.conftest import Served

pytestmark = pytest.mark.browser


def _link(served: Served, tmp_path: Path) -> str:
    (message,) = served.delivered(tmp_path)
    return str(message["reconnect_url"])


def _oauth_calls(served: Served) -> int:
    return len([r for r in served.sandbox.requests() if "oauth_window_uri" in r["path"]])


def test_page_shows_bank_and_reason_and_makes_no_mx_call(
    browser: Any, served: Served, tmp_path: Path
) -> None:
    url = _link(served, tmp_path)
    before = _oauth_calls(served)
    page = browser.new_page()
    try:
        page.goto(url)
        assert page.get_by_role("heading").inner_text().startswith("Reconnect")
        assert page.get_by_role("button", name="Reconnect").is_visible()
        shot(page, f"reconnect-page-{served.settings.database_url.split(':')[0]}")
    finally:
        page.close()
    assert _oauth_calls(served) == before


def test_without_javascript_the_button_posts_and_lands_on_mx(
    browser: Any, served: Served, tmp_path: Path
) -> None:
    """No JavaScript: the form POST is answered 303 to a fresh MX URI."""
    url = _link(served, tmp_path)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(url)
        page.get_by_role("button", name="Reconnect").click()
        page.wait_for_url("**/oauth/predirect_to/**")
        shot(page, "no-js-after-reconnect")
    finally:
        context.close()
    calls = [r for r in served.sandbox.requests() if "oauth_window_uri" in r["path"]]
    assert calls[-1]["query"]["referral_source"] == "BROWSER"


def test_expired_and_tampered_links_show_friendly_pages(
    browser: Any, served: Served, tmp_path: Path
) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from models import Notification
    from tests.web.conftest import SECRET
    from worker.clock import utc_now
    from worker.core import tokens

    url = _link(served, tmp_path)
    with served.worker.engine.connect() as conn:
        nid = conn.scalar(select(Notification.id))
    expired = tokens.sign(tokens.RECONNECT, nid, utc_now() - timedelta(minutes=1), SECRET.encode())
    page = browser.new_page()
    try:
        answer = page.goto(f"{served.base_url}/r/{expired}")
        assert answer.status == 410
        assert "expired" in page.inner_text("h1")
        shot(page, "expired-link")
        answer = page.goto(url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB"))
        assert answer.status == 404
        assert "not found" in page.inner_text("h1").lower()
        shot(page, "tampered-link")
    finally:
        page.close()


def _member(served: Served) -> tuple[str, int, Any]:
    from sqlalchemy import select

    from models import Member

    with served.worker.engine.connect() as conn:
        row = conn.execute(
            select(Member.reauth_state, Member.episode, Member.next_attempt_at)
        ).one()
    return row[0], row[1], row[2]


def _clicks(served: Served) -> list[Any]:
    from sqlalchemy import select

    from models import Click

    with served.worker.engine.connect() as conn:
        return list(conn.execute(select(Click.outcome, Click.reported, Click.confirmed_at)))


def test_with_javascript_the_popup_flow_ends_the_episode_after_confirmation(
    browser: Any, served: Served, tmp_path: Path
) -> None:
    """Reconnect opens MX's window as a popup; Authorize there posts oauthComplete/success to
    the page, which reports it; MX (the sandbox) is read, says CONNECTED, and the episode
    ends: the page says so and the member is idle with its click confirmed."""
    url = _link(served, tmp_path)
    page = browser.new_page()
    try:
        page.goto(url)
        with page.expect_popup() as popup_info:
            page.get_by_role("button", name="Reconnect").click()
        popup = popup_info.value
        popup.wait_for_load_state()
        popup.get_by_role("button", name="Authorize").wait_for()
        shot(popup, "popup-mx-window")
        popup.get_by_role("button", name="Authorize").click()
        page.get_by_text("You're reconnected").wait_for(timeout=15_000)
        shot(page, "popup-flow-reconnected")
    finally:
        page.close()
    state, _, _ = _member(served)
    assert state == "idle"
    outcome, reported, confirmed = _clicks(served)[-1]
    assert (outcome, reported) == ("minted", "success")
    assert confirmed is not None
    assert "already reconnected" in __import__("httpx").get(url).text


def test_app_flow_returns_through_oauth_complete_with_a_valid_state(
    browser: Any, served_app: Served, tmp_path: Path
) -> None:
    """An APP link's client_redirect_url is our /oauth/complete with a signed state: after
    Authorize, MX redirects there, the result is tied to the notification, confirmed with MX,
    and the done page shows; the state cannot be used twice."""
    (message,) = served_app.delivered(tmp_path)
    assert message["channel"] == "APP"
    page = browser.new_page()
    try:
        page.goto(message["oauth_window_uri"])
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url("**/oauth/complete?**")
        assert "reconnected" in page.inner_text("h1").lower()
        shot(page, "app-flow-oauth-complete")
        first = page.url
    finally:
        page.close()
    assert "state=" in first
    state, _, _ = _member(served_app)
    assert state == "idle"
    (outcome, reported, confirmed), *_ = _clicks(served_app)
    assert (outcome, reported) == ("app_return", "success")
    assert confirmed is not None
    import httpx

    httpx.get(first)  # the same state again: recorded nowhere
    assert len(_clicks(served_app)) == 1


def test_a_forged_completion_pauses_nothing(browser: Any, served: Served) -> None:
    """A public /oauth/complete claiming success without a state only triggers a read of the
    member from MX; MX says it is not connected, so the episode goes on, untouched."""
    before = _member(served)
    page = browser.new_page()
    try:
        page.goto(f"{served.base_url}/oauth/complete?member_guid=MBR-000000&status=success")
        shot(page, "forged-oauth-complete")
    finally:
        page.close()
    assert _member(served) == before
    assert _clicks(served) == []
    reads = [r for r in served.sandbox.requests() if r["path"].endswith("/members/MBR-000000")]
    assert reads, "the claim should have been checked with MX"
