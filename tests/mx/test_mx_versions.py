"""Contract suite for the API versions: Nexus, Platform v20250224 and Platform v20111101.

Every test runs against the sandbox over loopback HTTP (with Redis) and as an ASGI transport,
and pins both what the client returns or raises and what the sandbox saw: version headers,
paths (MX guids, or partner ids as a v20250224 path alias), query parameters, member reads,
blank and foreign-host URIs, per-user SSO failures and "Nexus not enabled".
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from mx_helpers import MxEnv, browser, run

from worker.config import load_settings
from worker.errors import (
    BlankOAuthUri,
    ConfigError,
    MemberNotFound,
    MxConfigurationError,
    MxError,
    MxRequestRefused,
    NexusNotEnabled,
    UnsafeOAuthUri,
    UserNotFound,
)
from worker.metrics import MX_URI_REFUSED, MX_URI_UNKNOWN_HOST
from worker.mx import MemberRequest, MemberState, OAuthRequest, OAuthWindow
from worker.mx import client as client_module

#: (settings overrides, Accept, Accept-Version) of each dialect.
DIALECTS = {
    "nexus": ({"mx_api": "nexus"}, "application/vnd.mx.nexus.v1+json", None),
    "v20250224": (
        {"mx_api": "platform", "mx_api_version": "v20250224"},
        "application/json",
        "v20250224",
    ),
    "v20111101": (
        {"mx_api": "platform", "mx_api_version": "v20111101"},
        "application/vnd.mx.api.v1+json",
        "v20111101",
    ),
}


@pytest.fixture(params=list(DIALECTS))
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class LogRecorder:
    """Stands in for the client's structlog logger: (level, event, fields) per call."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return record


def window(env: MxEnv, request: OAuthRequest, **settings: Any) -> OAuthWindow:
    async def go() -> OAuthWindow:
        async with env.client(**settings) as mx:
            return await mx.generate_oauth_window_uri(request)

    return run(go())


def read(env: MxEnv, request: MemberRequest, **settings: Any) -> MemberState:
    async def go() -> MemberState:
        async with env.client(**settings) as mx:
            return await mx.read_member(request)

    return run(go())


def oauth_calls(env: MxEnv) -> list[dict[str, Any]]:
    return [r for r in env.requests() if r["path"].endswith("/oauth_window_uri")]


def test_each_dialect_sends_its_version_headers(mx_env: MxEnv, dialect: str) -> None:
    """Nexus: its media type, no Accept-Version. Platform: the version's Accept with its
    Accept-Version, on the OAuth call and on the member read."""
    overrides, accept, version = DIALECTS[dialect]
    window(mx_env, browser(), **overrides)
    read(mx_env, MemberRequest("MBR-1", "USR-1"), **overrides)
    calls = [r for r in mx_env.requests() if r["endpoint"] in {"nexus", "platform"}]
    assert len(calls) == 2
    for entry in calls:
        assert entry["status"] == 200
        assert (entry["accept"], entry["accept_version"]) == (accept, version)


@pytest.mark.parametrize("version", ["v20250224", "v20111101"])
def test_406_for_the_version_is_client_wide_at_once(mx_env: MxEnv, version: str) -> None:
    """MX stops accepting the client's version (406): MxRequestRefused, a configuration error,
    on the first call, for the OAuth call and the member read alike."""
    mx_env.config.platform_versions = [v for v in ("v20250224", "v20111101") if v != version]
    settings = {"mx_api": "platform", "mx_api_version": version}
    with pytest.raises(MxRequestRefused) as info:
        window(mx_env, browser(), **settings)
    assert info.value.status == 406
    assert isinstance(info.value, MxConfigurationError)
    with pytest.raises(MxRequestRefused):
        read(mx_env, MemberRequest("MBR-1", "USR-1"), **settings)


def test_read_member_reports_the_live_state(mx_env: MxEnv, dialect: str) -> None:
    """read_member returns MX's connection status and aggregation fields (times as aware
    UTC), and is_connected once MX says CONNECTED."""
    overrides = DIALECTS[dialect][0]
    before = read(mx_env, MemberRequest("MBR-1", "USR-1"), **overrides)
    assert before.member_guid == "MBR-1"
    assert before.connection_status == "DENIED"  # the sandbox's default for on-the-fly members
    assert not before.is_connected
    mx_env.sandbox.set_member_state(
        "MBR-1",
        connection_status="CONNECTED",
        is_being_aggregated=True,
        aggregated_at="2026-03-01T10:00:00.000Z",
        successfully_aggregated_at="2026-02-28T09:30:00Z",
    )
    after = read(mx_env, MemberRequest("MBR-1", "USR-1"), **overrides)
    assert after.is_connected
    assert after.is_being_aggregated is True
    assert after.aggregated_at == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert after.successfully_aggregated_at == datetime(2026, 2, 28, 9, 30, tzinfo=UTC)
    if dialect == "nexus":
        assert (after.is_oauth, after.is_authenticated) == (True, None)
    else:
        assert (after.is_oauth, after.is_authenticated) == (None, True)
    paths = [r["path"] for r in mx_env.requests() if r["endpoint"] in {"nexus", "platform"}]
    expected = "/members/MBR-1" if dialect == "nexus" else "/users/USR-1/members/MBR-1/status"
    assert set(paths) == {expected}


def test_read_member_of_an_unknown_member_is_member_not_found(mx_env: MxEnv, dialect: str) -> None:
    """404 on the read → MemberNotFound."""
    with pytest.raises(MemberNotFound):
        read(mx_env, MemberRequest("MBR-GONE-1", "USR-1"), **DIALECTS[dialect][0])


def test_blank_uri_is_permanently_not_oauth_capable(mx_env: MxEnv, dialect: str) -> None:
    """A 200 whose oauth_window_uri is null: BlankOAuthUri (NotOAuthCapable), not a transient
    error retried eight times."""
    with pytest.raises(BlankOAuthUri):
        window(mx_env, browser("MBR-BLANKURI-1"), **DIALECTS[dialect][0])


def test_partner_ids_are_a_v20250224_path_alias_only(mx_env: MxEnv) -> None:
    """With REAUTH_MX_PLATFORM_PATH_IDS=partner, v20250224 paths carry the partner's user and
    member ids; the answer (and everything downstream) keeps MX's guid. Other APIs refuse it."""
    request = browser("MBR-7", "USR-7", user_id="partner-user-7", member_id="partner-member-7")
    got = window(
        mx_env,
        request,
        mx_api="platform",
        mx_api_version="v20250224",
        mx_platform_path_ids="partner",
    )
    (entry,) = oauth_calls(mx_env)
    assert entry["path"] == "/users/partner-user-7/members/partner-member-7/oauth_window_uri"
    assert got.member_guid == "MBR-partner-member-7"  # MX answers with its guid
    window(mx_env, request, mx_api="platform", mx_api_version="v20250224")
    assert oauth_calls(mx_env)[-1]["path"] == "/users/USR-7/members/MBR-7/oauth_window_uri"
    for api, version in (("nexus", "v20250224"), ("platform", "v20111101")):
        with pytest.raises(ConfigError, match="REAUTH_MX_PLATFORM_PATH_IDS"):
            load_settings(mx_api=api, mx_api_version=version, mx_platform_path_ids="partner")


@pytest.mark.parametrize("app2app", [None, False, True])
def test_enable_app2app_only_on_platform_app_links(mx_env: MxEnv, app2app: bool | None) -> None:
    """REAUTH_APP2APP goes out as enable_app2app on Platform APP links only; unset, nothing is
    sent (MX's default); BROWSER links and Nexus never carry it."""
    app = browser("MBR-2", referral_source="APP")
    for overrides in (DIALECTS["v20250224"][0], DIALECTS["v20111101"][0], {"mx_api": "nexus"}):
        window(mx_env, app, app2app=app2app, **overrides)
        window(mx_env, browser("MBR-3"), app2app=app2app, **overrides)
    sent = [c["query"].get("enable_app2app") for c in oauth_calls(mx_env)]
    flag = None if app2app is None else str(app2app).lower()
    assert sent == [flag, None, flag, None, None, None]


def test_foreign_host_is_counted_and_logged_unless_an_allow_list_refuses_it(
    mx_env: MxEnv, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URI on a bank's own host: accepted and counted as unknown without REAUTH_MX_URI_HOSTS;
    refused (UnsafeOAuthUri, counted) with an allow-list that does not name it; accepted again
    when the list names it."""
    overrides = DIALECTS[dialect][0]
    unknown = MX_URI_UNKNOWN_HOST._value.get()
    logs = LogRecorder()
    monkeypatch.setattr(client_module, "log", logs)
    got = window(mx_env, browser("MBR-FOREIGNURI-1"), **overrides)
    assert got.oauth_window_uri.startswith("https://auth.examplebank.test/")
    assert MX_URI_UNKNOWN_HOST._value.get() == unknown + 1
    (event,) = [e for e in logs.events if e[1] == "mx.oauth_uri_unknown_host"]
    assert (event[0], event[2]["host"]) == ("warning", "auth.examplebank.test")
    refused = MX_URI_REFUSED.labels(reason="host_not_allowed")._value.get()
    mx_only = {"mx_uri_hosts": ["moneydesktop.com", "mx.com"], **overrides}
    with pytest.raises(UnsafeOAuthUri) as info:
        window(mx_env, browser("MBR-FOREIGNURI-2"), **mx_only)
    assert info.value.reason == "host_not_allowed"
    assert "auth.examplebank.test/oauth" not in str(info.value)  # never the URI itself
    assert MX_URI_REFUSED.labels(reason="host_not_allowed")._value.get() == refused + 1
    (alert,) = [e for e in logs.events if e[1] == "mx.oauth_uri_refused"]
    assert (alert[0], alert[2]["reason"]) == ("error", "host_not_allowed")
    allowed = {"mx_uri_hosts": ["moneydesktop.com", "examplebank.test"], **overrides}
    assert window(mx_env, browser("MBR-FOREIGNURI-3"), **allowed).member_guid


@pytest.mark.parametrize(
    ("uri_base", "reason"),
    [
        ("https://int-app.moneydesktop.com@evil.example", "userinfo"),
        ("https://int-app.moneydesktop.com/ x", "characters"),
        ("https://int-app.moneydesktop.com/\x07", "characters"),
        ("http://int-app.moneydesktop.com", None),
    ],
)
def test_deceptive_uris_from_mx_are_refused(
    mx_env: MxEnv, uri_base: str, reason: str | None
) -> None:
    """Userinfo, whitespace or control characters are refused whatever the settings; http only
    passes with REAUTH_ALLOW_INSECURE_URLS (on in these tests, as for the sandbox)."""
    mx_env.config.uri_base = uri_base
    if reason is None:
        assert window(mx_env, browser()).oauth_window_uri.startswith("http://")
        return
    with pytest.raises(UnsafeOAuthUri) as info:
        window(mx_env, browser())
    assert info.value.reason == reason


def test_one_users_sso_failure_is_that_users_problem(mx_env: MxEnv) -> None:
    """The SSO API refuses one user (404): UserNotFound for that user's member, transient and
    never client-wide, while other users' members go on being served."""

    async def go() -> list[BaseException | OAuthWindow]:
        async with mx_env.client() as mx:
            return await asyncio.gather(
                mx.generate_oauth_window_uri(browser("MBR-a", "USR-NOUSER-1")),
                mx.generate_oauth_window_uri(browser("MBR-b", "USR-2")),
                mx.generate_oauth_window_uri(browser("MBR-c", "USR-3")),
                return_exceptions=True,
            )

    bad, *good = run(go())
    assert isinstance(bad, UserNotFound)
    assert not isinstance(bad, MxConfigurationError)
    assert all(isinstance(w, OAuthWindow) for w in good)


def test_nexus_not_enabled_is_client_wide_once_enough_users_say_so(mx_env: MxEnv) -> None:
    """Nexus switched off for the client (SSO 404 for everyone): with three users in flight,
    all get NexusNotEnabled; asking for one user alone stays that user's problem."""
    mx_env.config.nexus_enabled = False
    with pytest.raises(UserNotFound):
        window(mx_env, browser())

    async def go() -> list[BaseException | OAuthWindow]:
        async with mx_env.client() as mx:
            return await asyncio.gather(
                *(mx.generate_oauth_window_uri(browser(f"M{i}", f"U{i}")) for i in range(4)),
                return_exceptions=True,
            )

    outcomes = run(go())
    assert all(isinstance(o, NexusNotEnabled) for o in outcomes), outcomes


def test_sessions_expiring_after_n_uses_are_renewed_without_errors(mx_env: MxEnv) -> None:
    """Sessions that MX expires after 5 uses, 12 of one user's calls in flight: every call
    succeeds on a renewed session; nothing is a configuration error."""
    mx_env.config.session_max_uses = 5

    async def go() -> list[BaseException | OAuthWindow]:
        async with mx_env.client() as mx:
            return await asyncio.gather(
                *(mx.generate_oauth_window_uri(browser(f"MBR-{i}")) for i in range(12)),
                return_exceptions=True,
            )

    outcomes = run(go())
    errors = [o for o in outcomes if isinstance(o, MxError)]
    assert errors == []
    assert mx_env.sessions_created() >= 3
