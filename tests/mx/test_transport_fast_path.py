"""The MX transport's fast URL building gives exactly httpx's own URL, or falls back to it."""

from __future__ import annotations

import httpx
import pytest

from worker.mx.transport import request_url

URLS = [
    "https://int-api.mx.com/users/USR-1/members/MBR-1/oauth_window_uri"
    "?referral_source=BROWSER&skip_aggregation=false",
    "http://127.0.0.1:41531/users/USR%2F1/members/MBR-2/oauth_window_uri"
    "?client_redirect_url=https%3A%2F%2Fapp.example%2Fdone%3Fa%3D1&referral_source=APP",
    "https://int-sso.mx.com/sso/clients/cid/users/u/api_tokens.json",
    "https://api.example:8443/members/MBR-3",
    "https://api.example/members/MBR-3?",
    "https://api.example/",
    # Not canonical: httpx quotes or rejects these, so they take its full parse.
    "https://api.example/members/MBR 4?x=a b",
    "https://api.example/members/MBR-é",
    "https://api.example/members/MBR-5?x=100%",
    "https://api.example/members/MBR-6#frag",
    "https://api.example",
    "https://[::1]:8080/members/MBR-7?q=1",
]


@pytest.mark.parametrize("url", URLS)
def test_request_url_equals_httpx_url(url: str) -> None:
    fast = request_url(url)
    slow = httpx.URL(url)
    assert fast == slow
    assert str(fast) == str(slow)
    assert fast.raw_path == slow.raw_path
    assert fast.host == slow.host
    assert fast.port == slow.port
    assert fast.scheme == slow.scheme
    assert fast.query == slow.query
    # The request httpx builds from either carries the same target and Host header.
    a, b = httpx.Request("GET", fast), httpx.Request("GET", slow)
    assert str(a.url) == str(b.url)
    assert a.url.raw_path == b.url.raw_path
    assert a.headers["host"] == b.headers["host"]


def test_request_url_still_refuses_what_httpx_refuses() -> None:
    with pytest.raises(httpx.InvalidURL):
        request_url("https://api.example/members/MBR-1\n?x=1")
