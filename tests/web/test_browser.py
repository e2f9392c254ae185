"""The reconnect pages in a real browser (Playwright + Debian's Chromium).

Each test saves screenshots of the pages it sees (tests/web/browser.py says where)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.web.browser import shot
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
