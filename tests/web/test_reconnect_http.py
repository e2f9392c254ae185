"""reconnect_url over HTTP (no browser): what a scanner, a tamperer and a person each get."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from models import Click, Member
from tests.web.conftest import SECRET, Served
from worker.clock import utc_now
from worker.core import tokens


def _link(served: Served, tmp_path: Path) -> str:
    (message,) = served.delivered(tmp_path)
    url = message["reconnect_url"]
    assert url.startswith(served.base_url + "/r/")
    return str(url)


def _mx_calls(served: Served) -> int:
    return len([r for r in served.sandbox.requests() if "oauth_window_uri" in r["path"]])


def test_message_carries_reconnect_url_and_get_makes_no_mx_call(
    served: Served, tmp_path: Path
) -> None:
    """GET shows the page (bank, why, one Reconnect button) and asks MX for nothing."""
    url = _link(served, tmp_path)
    before = _mx_calls(served)
    page = httpx.get(url)
    assert page.status_code == 200
    assert "Reconnect" in page.text
    assert 'method="post"' in page.text
    assert _mx_calls(served) == before
    h = page.headers
    assert h["cache-control"] == "no-store"
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-frame-options"] == "DENY"
    assert h["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in h["content-security-policy"]
    assert "cross-origin-opener-policy" not in h


def test_post_mints_a_fresh_browser_uri_and_answers_303(served: Served, tmp_path: Path) -> None:
    url = _link(served, tmp_path)
    before = _mx_calls(served)
    answer = httpx.post(url, follow_redirects=False)
    assert answer.status_code == 303
    assert "/oauth/predirect_to/" in answer.headers["location"]
    calls = [r for r in served.sandbox.requests() if "oauth_window_uri" in r["path"]]
    assert len(calls) == before + 1
    assert calls[-1]["query"]["referral_source"] == "BROWSER"
    with served.worker.engine.connect() as conn:
        assert conn.scalar(select(Click.outcome)) == "minted"


def test_tampered_and_unknown_links_get_the_same_404(served: Served, tmp_path: Path) -> None:
    url = _link(served, tmp_path)
    token = url.rsplit("/", 1)[1]
    tampered = url[: -len(token)] + token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    unknown = tokens.sign(
        tokens.RECONNECT, uuid.uuid4(), utc_now() + timedelta(days=1), SECRET.encode()
    )
    a = httpx.get(tampered)
    b = httpx.get(f"{served.base_url}/r/{unknown}")
    assert a.status_code == b.status_code == 404
    assert a.text.split("<main>")[1] == b.text.split("<main>")[1]
    assert "Traceback" not in a.text
    assert httpx.post(tampered, follow_redirects=False).status_code == 404


def test_expired_link_is_410(served: Served) -> None:
    with served.worker.engine.connect() as conn:
        from models import Notification

        nid = conn.scalar(select(Notification.id))
    expired = tokens.sign(tokens.RECONNECT, nid, utc_now() - timedelta(seconds=1), SECRET.encode())
    assert httpx.get(f"{served.base_url}/r/{expired}").status_code == 410


def test_post_from_another_origin_is_refused(served: Served, tmp_path: Path) -> None:
    url = _link(served, tmp_path)
    answer = httpx.post(url, headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert answer.status_code == 403


def test_clicks_are_rate_limited_per_member(served: Served, tmp_path: Path) -> None:
    url = _link(served, tmp_path)
    limit = served.settings.reconnect_clicks_per_hour
    codes = [httpx.post(url, follow_redirects=False).status_code for _ in range(limit + 1)]
    assert codes[:limit] == [303] * limit
    assert codes[limit] == 429


def test_closed_episode_says_already_reconnected(served: Served, tmp_path: Path) -> None:
    url = _link(served, tmp_path)
    with served.worker.engine.begin() as conn:
        conn.execute(update(Member).values(reauth_state="idle"))
    before = _mx_calls(served)
    assert "already reconnected" in httpx.get(url).text
    answer = httpx.post(url, follow_redirects=False)
    assert answer.status_code == 200
    assert "already reconnected" in answer.text
    assert _mx_calls(served) == before


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health(served: Served, path: str) -> None:
    assert httpx.get(served.base_url + path).status_code == 200
