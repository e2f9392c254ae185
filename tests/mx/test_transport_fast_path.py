"""The MX client's fast request building gives exactly httpx's own URL and request, or falls
back to httpx's parse."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx
import pytest

from worker.config import Settings
from worker.mx.api import Call
from worker.mx.client import _COMMON_HEADERS, MxClient
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


CALLS = [
    Call(
        "GET",
        "https://int-api.mx.com/members/M1/oauth_window_uri",
        {"Accept": "a/b"},
        "w",
        {"referral_source": "APP", "client_redirect_url": "https://app.example/x?y=1 2"},
    ),
    Call("POST", "https://int-api.mx.com/sessions", {"Accept": "a", "Content-Type": "a"}, "s"),
    Call("GET", "https://int-sso.mx.com/sso/c/users/u/api_token.json", {"Accept": "s"}, "t"),
]


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.what)
def test_client_request_equals_the_plain_construction(call: Call) -> None:
    settings = Settings(mx_api_key="k" * 16, mx_client_id="cid")
    client = MxClient(settings)
    for token in ("tok-1", "tok-2", "tok-1"):  # the second and third reuse the cached parts
        auth = {"MD-SESSION-TOKEN": token}
        fast = client._request(call, auth)
        url = f"{call.url}?{urlencode(call.params)}" if call.params else call.url
        plain = httpx.Request(call.method, url, headers={**_COMMON_HEADERS, **call.headers, **auth})
        assert fast.method == plain.method
        assert fast.url == plain.url
        assert fast.headers.raw == plain.headers.raw
        assert fast.content == plain.content == b""
        assert fast.extensions["timeout"] == httpx.Timeout(settings.mx_timeout).as_dict()
