"""The client against hand-written MX answers through ``httpx.MockTransport``.

Independent of the sandbox: these pin the mapping from what MX might send (undocumented error
envelopes, 4011 under any status, Retry-After dates, broken transports) to the error tree, and
a Hypothesis property that *nothing* outside the tree escapes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mx_helpers import browser, run

from worker.config import Settings
from worker.errors import (
    BadResponse,
    BlankOAuthUri,
    MemberNotFound,
    MxBadRequest,
    MxConfigurationError,
    MxConnectionError,
    MxError,
    MxForbidden,
    MxRequestRefused,
    MxTimeout,
    MxUnauthorized,
    NexusNotEnabled,
    NotOAuthCapable,
    RateLimitBacklog,
    RateLimited,
    ServerError,
    SessionExpired,
    UnsafeOAuthUri,
    UserNotFound,
    UserRefused,
)
from worker.mx import OAuthWindow, build_mx_client

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEAVES = {
    NotOAuthCapable,
    BlankOAuthUri,
    MemberNotFound,
    MxBadRequest,
    UnsafeOAuthUri,
    MxUnauthorized,
    MxForbidden,
    NexusNotEnabled,
    MxRequestRefused,
    RateLimited,
    RateLimitBacklog,
    ServerError,
    MxTimeout,
    MxConnectionError,
    BadResponse,
    SessionExpired,
    UserRefused,
    UserNotFound,
}
OK_URI = "https://int-app.moneydesktop.com/oauth/predirect_to/MBR-1/t"
OK_MEMBER = {"member": {"guid": "MBR-1", "oauth_window_uri": OK_URI}}
Handler = Callable[[httpx.Request], httpx.Response]


def mx_settings(api: str = "platform", **kw: Any) -> Settings:
    return Settings(
        mx_api=api,
        mx_base_url="https://mx.test",
        mx_sso_base_url="https://sso.mx.test",
        mx_client_id="cid",
        mx_api_key="key-abcdef",
        mx_rate_limit_per_second=100_000.0,
        **kw,
    )


def generate(handler: Handler, api: str = "platform", **kw: Any) -> OAuthWindow:
    async def go() -> OAuthWindow:
        client = build_mx_client(
            mx_settings(api, **kw), transport=httpx.MockTransport(handler), clock=lambda: NOW
        )
        async with client:
            return await client.generate_oauth_window_uri(browser())

    return run(go())


def nexus(oauth: Callable[[httpx.Request, int], httpx.Response]) -> Handler:
    """A Nexus server whose OAuth endpoint answers ``oauth(request, n)`` (n = call number)."""
    calls = {"n": 0, "sessions": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "sso.mx.test":
            return httpx.Response(200, json={"api_token": {"token": "api-tok"}})
        if request.url.path == "/sessions":
            calls["sessions"] += 1
            return httpx.Response(200, json={"session": {"token": f"sess-{calls['sessions']}"}})
        calls["n"] += 1
        return oauth(request, calls["n"])

    handler.calls = calls  # type: ignore[attr-defined]
    return handler


def answer(status: int, body: Any = None, **kw: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes | str):
            return httpx.Response(status, content=body, **kw)
        return httpx.Response(status, json=body, **kw)

    return handler


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": 4000, "message": "Member cannot use OAuth"}},
        {"error": "Member cannot use OAuth"},
        {"message": "Member cannot use OAuth"},
        {"message": "Bad Request", "error": {"message": "Member cannot use OAuth"}},
        {"errors": [{"message": "member cannot use oauth."}]},
        "Member cannot use OAuth",
    ],
)
def test_not_oauth_message_is_found_in_any_envelope(body: Any) -> None:
    """The undocumented envelope: top-level, under error (string/object), errors[], plain text."""
    with pytest.raises(NotOAuthCapable):
        generate(answer(400, body))


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": {"message": "required parameter missing"}}, MxBadRequest),
        (401, None, UserRefused),
        (403, {"error": "IP not allow-listed"}, UserRefused),
        (404, None, MemberNotFound),
        (405, None, MxRequestRefused),
        (406, {"error": "didn't specify a valid API version"}, MxRequestRefused),
        (415, None, MxRequestRefused),
        (408, None, MxTimeout),
        (409, None, MxBadRequest),
        (422, None, MxBadRequest),
        (429, None, RateLimited),
        (500, b"<html>oops</html>", ServerError),
        (502, None, ServerError),
        (503, None, ServerError),
        (302, None, BadResponse),
        (200, b"not json", BadResponse),
        (200, {"member": {"guid": "MBR-1"}}, BadResponse),
        (200, {"member": {"guid": "MBR-1", "oauth_window_uri": None}}, BlankOAuthUri),
        (200, {"member": {"guid": "MBR-1", "oauth_window_uri": " "}}, BlankOAuthUri),
        (200, {"member": {"guid": "MBR-1", "oauth_window_uri": 7}}, BadResponse),
        (200, {"member": {"guid": "MBR-1", "oauth_window_uri": "javascript:x"}}, UnsafeOAuthUri),
        (200, [1, 2], BadResponse),
    ],
)
def test_status_mapping(status: int, body: Any, error: type[MxError]) -> None:
    """Each status (Platform API: no session refresh) maps to one documented error class; a
    single 401/403 is one user's refusal, 405/406/415 are about the request's shape."""
    with pytest.raises(error) as info:
        generate(answer(status, body))
    assert type(info.value) is error


def test_retry_after_http_date_is_seconds_from_the_clock() -> None:
    """Retry-After as an HTTP-date becomes seconds relative to the injected clock."""
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    with pytest.raises(RateLimited) as info:
        generate(answer(429, None, headers={"Retry-After": when}))
    assert info.value.retry_after == 90.0


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), ("-5", None), ("soon", None)])
def test_retry_after_values(value: str, seconds: float | None) -> None:
    """Delta-seconds pass through, negatives clamp to 0, garbage is ignored."""
    with pytest.raises(RateLimited) as info:
        generate(answer(429, None, headers={"Retry-After": value}))
    assert info.value.retry_after == seconds


def test_content_length_over_cap_is_refused_without_reading() -> None:
    """A declared Content-Length above the cap → BadResponse."""
    big = json.dumps({**OK_MEMBER, "pad": "x" * 70_000}).encode()
    with pytest.raises(BadResponse, match="larger than"):
        generate(answer(200, big))


@pytest.mark.parametrize("status", [400, 401, 403, 500])
def test_4011_under_any_status_refreshes_the_session_once(status: int) -> None:
    """Error code 4011 means "session expired" whatever the HTTP status: new session, retry."""

    def oauth(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(status, json={"error": {"code": 4011, "message": "expired"}})
        assert request.headers["MD-SESSION-TOKEN"] == "sess-2"
        return httpx.Response(200, json=OK_MEMBER)

    handler = nexus(oauth)
    assert generate(handler, "nexus").member_guid == "MBR-1"
    assert handler.calls == {"n": 2, "sessions": 2}  # type: ignore[attr-defined]


def test_4011_on_every_fresh_session_is_transient_never_configuration() -> None:
    """A 4011 always means "get a new session": after SESSION_TRIES sessions the call is a
    transient SessionExpired for that member, never a fleet-wide configuration error."""
    from worker.mx.client import SESSION_TRIES

    handler = nexus(lambda request, n: httpx.Response(401, json={"code": 4011}))
    with pytest.raises(SessionExpired) as info:
        generate(handler, "nexus")
    assert not isinstance(info.value, MxConfigurationError)
    calls = {"n": SESSION_TRIES, "sessions": SESSION_TRIES}
    assert handler.calls == calls  # type: ignore[attr-defined]


def test_nexus_403_is_refused_without_a_session_refresh() -> None:
    """403 is the IP allow-list, a disabled feature or the user: no refresh; one user's 403 is
    that user's transient problem."""
    handler = nexus(lambda request, n: httpx.Response(403, json={"error": "forbidden"}))
    with pytest.raises(UserRefused):
        generate(handler, "nexus")
    assert handler.calls == {"n": 1, "sessions": 1}  # type: ignore[attr-defined]


def test_sso_404_for_one_user_is_user_not_found_for_many_nexus_not_enabled() -> None:
    """SSO 404 is what an unknown user gets, and MX's "Nexus not enabled": one user →
    UserNotFound (transient, never a gone member); three distinct users in flight with no
    success → NexusNotEnabled (client-wide) for all of them."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "not found"})

    with pytest.raises(UserNotFound):
        generate(handler, "nexus")

    async def many() -> list[BaseException | OAuthWindow]:
        client = build_mx_client(mx_settings("nexus"), transport=httpx.MockTransport(handler))
        async with client:
            return await asyncio.gather(
                *(client.generate_oauth_window_uri(browser(f"M{i}", f"U{i}")) for i in range(3)),
                return_exceptions=True,
            )

    outcomes = run(many())
    assert all(isinstance(o, NexusNotEnabled) for o in outcomes), outcomes
    assert "Nexus not enabled" in str(outcomes[0])


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ConnectError("refused"), MxConnectionError),
        (httpx.ReadError("reset"), MxConnectionError),
        (httpx.RemoteProtocolError("bad"), MxConnectionError),
        (httpx.ReadTimeout("slow"), MxTimeout),
        (httpx.PoolTimeout("pool"), MxTimeout),
        (httpx.DecodingError("gzip"), BadResponse),
        (aiohttp.ServerDisconnectedError(), MxConnectionError),
        (aiohttp.ServerTimeoutError("read"), MxTimeout),
        (ConnectionResetError(104, "reset"), MxConnectionError),
        (RuntimeError("Session is closed"), MxConnectionError),
    ],
)
def test_transport_exceptions_are_translated(exc: Exception, error: type[MxError]) -> None:
    """Every library exception becomes one tree error, chained with ``from``."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(error) as info:
        generate(handler)
    assert info.value.__cause__ is exc


def test_aiohttp_reset_disguised_as_connect_timeout_is_a_connection_error() -> None:
    """httpx_aiohttp reports a server disconnect as ConnectTimeout; the chain tells the truth."""

    def handler(request: httpx.Request) -> httpx.Response:
        try:
            raise aiohttp.ServerDisconnectedError()
        except aiohttp.ServerDisconnectedError as inner:
            raise httpx.ConnectTimeout("disconnected") from inner

    with pytest.raises(MxConnectionError):
        generate(handler)


# --- the property -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["member", "guid", "oauth_window_uri", "error", "message", "code"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=10,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.just(json.dumps(OK_MEMBER).encode()),
    st.sampled_from(
        [
            b'{"error": {"code": 4011}}',
            b'{"error": "Member cannot use OAuth"}',
            b"<html>502</html>",
            b'{"member": {"guid": "',
        ]
    ),
)
retry_after = st.none() | st.sampled_from(["1", "abc", "-1", "Wed, 21 Oct 2015 07:28:00 GMT"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    api=st.sampled_from(["nexus", "platform"]),
    steps=st.lists(
        st.tuples(st.integers(min_value=100, max_value=599), bodies, retry_after),
        min_size=4,
        max_size=4,
    ),
)
def test_every_answer_is_a_window_or_exactly_one_tree_error(
    api: str, steps: list[tuple[int, bytes, str | None]]
) -> None:
    """Whatever MX answers, at any step (SSO, session, OAuth, retry), the client returns a
    window or raises an instance of exactly one leaf of the MxError tree, nothing else."""
    answers = iter(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        status, body, after = next(answers, (200, json.dumps(OK_MEMBER).encode(), None))
        headers = {"Retry-After": after} if after else {}
        if 100 <= status < 200:
            status = 200 if status % 2 else 199  # httpx cannot model informational answers
        return httpx.Response(status, content=body, headers=headers)

    outcome: OAuthWindow | MxError
    try:
        outcome = generate(handler, api)
    except MxError as exc:
        outcome = exc
    if isinstance(outcome, MxError):
        assert type(outcome) in LEAVES
        assert str(outcome)
    else:
        assert outcome.oauth_window_uri.startswith("https://")
