"""Contract suite: the MX client against the sandbox, over loopback HTTP and injected ASGI.

Every test runs in both ``mx_env`` environments (see conftest): real uvicorn + Redis, and the same
app as an ``httpx.ASGITransport``. Each asserts what the client returns or raises *and* what
the sandbox saw, so the request contract (paths, headers, query) is pinned as well.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from mx_helpers import MxEnv, browser, run

from worker.errors import (
    BadResponse,
    MemberNotFound,
    MxConfigurationError,
    MxError,
    MxTimeout,
    MxUnauthorized,
    NotOAuthCapable,
    RateLimited,
    ServerError,
    UserRefused,
)
from worker.mx import OAuthRequest, OAuthWindow, build_mx_client

FIXED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def call(env: MxEnv, request: OAuthRequest, **settings: object) -> OAuthWindow:
    async def go() -> OAuthWindow:
        async with env.client(**settings) as mx:
            return await mx.generate_oauth_window_uri(request)

    return run(go())


def test_nexus_success_runs_sso_session_and_oauth_calls(mx_env: MxEnv) -> None:
    """Nexus: SSO token → POST /sessions → GET oauth_window_uri, each with its own auth header;
    the window carries MX's guid, a one-time predirect URI and the injected clock's time."""
    transport = mx_env.transport_factory() if mx_env.transport_factory else None
    client = build_mx_client(mx_env.settings(), transport=transport, clock=lambda: FIXED)

    async def go() -> OAuthWindow:
        async with client:
            return await client.generate_oauth_window_uri(browser(skip_aggregation=True))

    window = run(go())
    assert window.member_guid == "MBR-1"
    assert window.generated_at == FIXED
    uri = urlsplit(window.oauth_window_uri)
    assert uri.path.startswith("/oauth/predirect_to/MBR-1/")
    assert parse_qs(uri.query) == {"referral_source": ["BROWSER"]}
    log = mx_env.requests()
    assert [(r["method"], r["endpoint"], r["auth"]) for r in log] == [
        ("GET", "sso", "MD-API-KEY"),
        ("POST", "sessions", "MD-SESSION-TOKEN".replace("SESSION", "API")),
        ("GET", "nexus", "MD-SESSION-TOKEN"),
    ]
    assert log[0]["path"] == f"/sso/{mx_env.client_id}/users/USR-1/api_token.json"
    assert log[2]["query"] == {"referral_source": "BROWSER", "skip_aggregation": "true"}


def test_nexus_uses_user_id_for_sso_when_present(mx_env: MxEnv) -> None:
    """The SSO token is read for the partner user id; user_guid is only the fallback."""
    call(mx_env, browser(user_id="partner-42"))
    assert mx_env.requests()[0]["path"].endswith("/users/partner-42/api_token.json")


@pytest.mark.parametrize(
    ("version", "accept"),
    [("v20250224", "application/json"), ("v20111101", "application/vnd.mx.api.v1+json")],
)
def test_platform_success_uses_basic_auth_version_headers_and_boolean_skip(
    mx_env: MxEnv, version: str, accept: str
) -> None:
    """Platform: one GET under the user with HTTP Basic, the version's Accept and
    Accept-Version; skip_aggregation as true/false."""
    window = call(mx_env, browser(skip_aggregation=True), mx_api="platform", mx_api_version=version)
    assert window.member_guid == "MBR-1"
    (entry,) = mx_env.requests()
    assert entry["path"] == "/users/USR-1/members/MBR-1/oauth_window_uri"
    assert entry["auth"] == "Authorization"
    assert (entry["accept"], entry["accept_version"]) == (accept, version)
    assert entry["query"] == {"referral_source": "BROWSER", "skip_aggregation": "true"}


@pytest.mark.parametrize("api", ["nexus", "platform"])
def test_uris_are_fresh_each_call(mx_env: MxEnv, api: str) -> None:
    """Two calls for one member give two different one-time URIs."""
    first = call(mx_env, browser(), mx_api=api)
    second = call(mx_env, browser(), mx_api=api)
    assert first.oauth_window_uri != second.oauth_window_uri


def test_moved_member_is_answered_under_another_guid(mx_env: MxEnv) -> None:
    """MX may answer with a different member guid; the client returns MX's guid."""
    window = call(mx_env, browser("MBR-MOVED-7"))
    assert window.member_guid == "MBR-moved-MBR-MOVED-7"


@pytest.mark.parametrize("api", ["nexus", "platform"])
def test_unknown_member_is_member_not_found(mx_env: MxEnv, api: str) -> None:
    """404 → MemberNotFound (permanent)."""
    with pytest.raises(MemberNotFound) as info:
        call(mx_env, browser("MBR-GONE-1"), mx_api=api)
    assert info.value.status == 404


@pytest.mark.parametrize("envelope", ["error-object", "error-string", "top-level"])
@pytest.mark.parametrize("api", ["nexus", "platform"])
def test_not_oauth_member_in_every_envelope(mx_env: MxEnv, api: str, envelope: str) -> None:
    """400 "Member cannot use OAuth" is recognised wherever the envelope puts the message."""
    mx_env.config.error_envelope = envelope
    with pytest.raises(NotOAuthCapable):
        call(mx_env, browser("MBR-NOOAUTH-1"), mx_api=api)


@pytest.mark.parametrize("api", ["nexus", "platform"])
def test_wrong_api_key_for_one_user_is_that_users_transient_problem(
    mx_env: MxEnv, api: str
) -> None:
    """One user's refusal cannot tell a wrong key from a disabled user: UserRefused (transient),
    never a fleet-wide configuration error."""
    with pytest.raises(UserRefused) as info:
        call(mx_env, browser(), mx_api=api, mx_api_key="wrong-key-123")
    assert info.value.status == 401
    assert not isinstance(info.value, MxConfigurationError)


@pytest.mark.parametrize("api", ["nexus", "platform"])
def test_wrong_api_key_for_many_users_is_unauthorized_for_all_in_flight(
    mx_env: MxEnv, api: str
) -> None:
    """Refusals for REAUTH_MX_CREDENTIAL_FAILURE_USERS distinct users with no success in
    between: MxUnauthorized, for every call in flight (the first ones wait for the verdict
    instead of spending their members' attempts)."""

    async def go() -> list[BaseException | OAuthWindow]:
        async with mx_env.client(mx_api=api, mx_api_key="wrong-key-123") as mx:
            return await asyncio.gather(
                *(mx.generate_oauth_window_uri(browser(f"MBR-{i}", f"USR-{i}")) for i in range(5)),
                return_exceptions=True,
            )

    outcomes = run(go())
    assert all(isinstance(o, MxUnauthorized) for o in outcomes), outcomes


def test_success_in_between_keeps_refusals_per_user(mx_env: MxEnv) -> None:
    """SSO refusals for three users, one at a time with a success between each: none is
    client-wide, because the key demonstrably works."""
    mx_env.config.sso_user_failure_status = 401

    async def go() -> list[type[BaseException] | None]:
        seen: list[type[BaseException] | None] = []
        async with mx_env.client() as mx:
            for i in range(3):
                try:
                    await mx.generate_oauth_window_uri(browser(f"MBR-x{i}", f"USR-NOUSER-{i}"))
                except MxError as exc:
                    seen.append(type(exc))
                await mx.generate_oauth_window_uri(browser(f"MBR-ok{i}", f"USR-ok{i}"))
        return seen

    assert run(go()) == [UserRefused, UserRefused, UserRefused]


def test_session_expiry_mid_run_refreshes_once_per_expiry(mx_env: MxEnv) -> None:
    """Forced 4011 every 3rd call: each expiry costs one new session and one retry, and every
    call still succeeds."""
    mx_env.config.expire_session_every = 3

    async def go() -> list[OAuthWindow]:
        async with mx_env.client() as mx:
            return [await mx.generate_oauth_window_uri(browser(f"MBR-{i}")) for i in range(8)]

    windows = run(go())
    assert len(windows) == 8
    expired = [r for r in mx_env.requests() if r["endpoint"] == "nexus" and r["status"] == 401]
    assert len(expired) == 3  # nexus calls 3, 6, 9 of 11 (8 + 3 retries)
    assert mx_env.sessions_created() == 1 + len(expired)


def test_session_expired_by_ttl_is_replaced(mx_env: MxEnv) -> None:
    """MX forgot the session (sandbox restart, TTL): 401 → new session → success."""

    async def go() -> None:
        async with mx_env.client() as mx:
            await mx.generate_oauth_window_uri(browser())
            mx_env.sandbox._sessions.clear()  # MX side forgets every session
            await mx.generate_oauth_window_uri(browser())

    run(go())
    assert mx_env.sessions_created() == 2


@pytest.mark.parametrize(
    ("fault", "retry_after"), [("rate_429", 7.0), ("rate_429_no_retry_after", None)]
)
def test_429_carries_retry_after_when_sent(
    mx_env: MxEnv, fault: str, retry_after: float | None
) -> None:
    """429 → RateLimited, with MX's Retry-After in seconds or None."""
    mx_env.config.update({fault: 1.0, "retry_after_seconds": 7})
    with pytest.raises(RateLimited) as info:
        call(mx_env, browser(), mx_api="platform")
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize("fault", ["rate_500", "rate_503", "rate_html"])
def test_server_errors_are_server_error(mx_env: MxEnv, fault: str) -> None:
    """5xx, JSON or an HTML error page, → ServerError (transient)."""
    mx_env.config.update({fault: 1.0})
    with pytest.raises(ServerError):
        call(mx_env, browser(), mx_api="platform")


def test_html_page_with_200_is_bad_response(mx_env: MxEnv) -> None:
    """A 200 that is not JSON (a captive portal, a proxy page) → BadResponse."""
    mx_env.config.update({"rate_html": 1.0, "html_status": 200})
    with pytest.raises(BadResponse):
        call(mx_env, browser(), mx_api="platform")


def test_malformed_json_is_bad_response(mx_env: MxEnv) -> None:
    """Truncated JSON on a 200 → BadResponse."""
    mx_env.config.update({"rate_malformed": 1.0})
    with pytest.raises(BadResponse):
        call(mx_env, browser())


def test_oversized_body_is_bad_response(mx_env: MxEnv) -> None:
    """A 10 MB answer (chunked, no Content-Length) → BadResponse after at most the cap."""
    mx_env.config.update({"rate_oversize": 1.0, "fault_endpoints": ["platform"]})
    with pytest.raises(BadResponse, match="larger than 65536"):
        call(mx_env, browser(), mx_api="platform")


def test_hang_past_timeout_is_mx_timeout(mx_env: MxEnv) -> None:
    """A server that never answers → MxTimeout after REAUTH_MX_TIMEOUT."""
    mx_env.config.update({"rate_hang": 1.0, "hang_seconds": 30.0})
    with pytest.raises(MxTimeout):
        call(mx_env, browser(), mx_api="platform", mx_timeout=0.3)


def test_faults_on_session_creation_surface_as_the_same_errors(mx_env: MxEnv) -> None:
    """A 503 while creating the Nexus session is a ServerError like any other."""
    mx_env.config.update({"rate_503": 1.0, "fault_endpoints": ["sessions"]})
    with pytest.raises(ServerError):
        call(mx_env, browser())


def test_app_redirect_is_sent_and_browser_never_carries_one(mx_env: MxEnv) -> None:
    """APP requests carry client_redirect_url and the scheme; no BROWSER request ever does."""
    app = browser(
        "MBR-2",
        referral_source="APP",
        client_redirect_url="https://app.example/oauth/done",
        ui_message_webview_url_scheme="exampleapp",
    )
    allowed = ["https://app.example/"]
    call(mx_env, app, allowed_redirect_prefixes=allowed)
    call(mx_env, browser("MBR-3", ui_message_webview_url_scheme="exampleapp"))
    call(mx_env, app, allowed_redirect_prefixes=allowed, mx_api="platform")
    call(mx_env, browser("MBR-3", ui_message_webview_url_scheme="x"), mx_api="platform")
    oauth = [r for r in mx_env.requests() if r["endpoint"] in {"nexus", "platform"}]
    assert oauth[0]["query"]["client_redirect_url"] == "https://app.example/oauth/done"
    assert oauth[0]["query"]["ui_message_webview_url_scheme"] == "exampleapp"
    for entry in oauth:
        if entry["query"]["referral_source"] == "BROWSER":
            assert "client_redirect_url" not in entry["query"]
    # Platform documents the scheme for APP only, so its BROWSER request leaves it out.
    assert "ui_message_webview_url_scheme" not in oauth[3]["query"]


def test_redirect_outside_the_allow_list_is_refused_before_any_request(mx_env: MxEnv) -> None:
    """A client_redirect_url not under REAUTH_ALLOWED_REDIRECT_PREFIXES is a ValueError."""
    app = browser(referral_source="APP", client_redirect_url="https://evil.example/x")
    with pytest.raises(ValueError, match="ALLOWED_REDIRECT_PREFIXES"):
        call(mx_env, app, allowed_redirect_prefixes=["https://app.example/"])
    assert mx_env.requests() == []


def test_redirect_with_browser_cannot_be_built() -> None:
    """OAuthRequest refuses client_redirect_url with BROWSER (MX: APP only)."""
    with pytest.raises(ValueError, match="APP"):
        browser(client_redirect_url="https://app.example/x")
    with pytest.raises(ValueError, match="BROWSER or APP"):
        browser(referral_source="WEB")
