"""The MX sandbox on its own: auth and media-type checks, one-time tokens and URIs, member
sources, admin endpoints, seeded fault draws and the CLI flags. Raw HTTP, no MX client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from mx_helpers import MxEnv

from worker.sandbox.app import Sandbox
from worker.sandbox.config import SandboxConfig

SSO = "application/vnd.moneydesktop.sso.v3+json"
NEXUS = "application/vnd.mx.nexus.v1+json"
V1 = "application/vnd.mx.api.v1+json"
#: Platform headers per version (Accept + Accept-Version, required since 2026-08-12).
PLATFORM = {"Accept": "application/json", "Accept-Version": "v20250224"}
PLATFORM_V1 = {"Accept": V1, "Accept-Version": "v20111101"}


def sso_path(env: MxEnv, user: str = "USR-1") -> str:
    return f"/sso/{env.client_id}/users/{user}/api_token"


def session_token(http: httpx.Client, env: MxEnv, user: str = "USR-1") -> str:
    api = http.get(sso_path(env, user), headers={"MD-API-KEY": env.config.api_key, "Accept": SSO})
    token = api.json()["api_token"]["token"]
    nexus = {"MD-API-TOKEN": token, "Accept": NEXUS, "Content-Type": NEXUS}
    return str(http.post("/sessions", headers=nexus).json()["session"]["token"])


@pytest.fixture
def http(served: MxEnv) -> Any:
    with httpx.Client(base_url=served.base_url) as client:
        yield client


def test_sso_checks_key_and_media_type(served: MxEnv, http: httpx.Client) -> None:
    """SSO: missing/wrong MD-API-KEY or wrong client id → 401; wrong Accept → 406; with and
    without the .json suffix."""
    key = served.config.api_key
    assert http.get(sso_path(served), headers={"Accept": SSO}).status_code == 401
    assert http.get(sso_path(served), headers={"MD-API-KEY": "x", "Accept": SSO}).status_code == 401
    wrong_client = "/sso/other/users/USR-1/api_token"
    assert http.get(wrong_client, headers={"MD-API-KEY": key, "Accept": SSO}).status_code == 401
    xml = {"MD-API-KEY": key, "Accept": "application/vnd.moneydesktop.sso.v3+xml"}
    assert http.get(sso_path(served), headers=xml).status_code == 406
    ok = {"MD-API-KEY": key, "Accept": SSO}
    assert http.get(sso_path(served), headers=ok).status_code == 200
    assert http.get(sso_path(served) + ".json", headers=ok).status_code == 200


def test_api_tokens_are_one_time(served: MxEnv, http: httpx.Client) -> None:
    """An SSO API token makes one session; reusing it → 401. Wrong Content-Type → 415."""
    api = http.get(sso_path(served), headers={"MD-API-KEY": served.config.api_key, "Accept": SSO})
    token = api.json()["api_token"]["token"]
    headers = {"MD-API-TOKEN": token, "Accept": NEXUS}
    assert (
        http.post("/sessions", headers={**headers, "Content-Type": "application/json"}).status_code
        == 415
    )
    assert http.post("/sessions", headers={**headers, "Content-Type": NEXUS}).status_code == 200
    assert http.post("/sessions", headers={**headers, "Content-Type": NEXUS}).status_code == 401


def test_nexus_session_slides_and_expires(served: MxEnv, http: httpx.Client) -> None:
    """Sessions expire after session_ttl_seconds without use → 401 with code 4011."""
    served.config.session_ttl_seconds = 0.0
    token = session_token(http, served)
    headers = {"MD-SESSION-TOKEN": token, "Accept": NEXUS}
    answer = http.get("/members/MBR-1/oauth_window_uri", headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {"error": {"code": 4011, "message": "Session expired"}}


def test_nexus_checks_session_and_media_type(served: MxEnv, http: httpx.Client) -> None:
    """Nexus OAuth: no/unknown session → 401; wrong Accept → 406; wrong Content-Type → 415."""
    path = "/members/MBR-1/oauth_window_uri"
    assert http.get(path, headers={"Accept": NEXUS}).status_code == 401
    assert http.get(path, headers={"MD-SESSION-TOKEN": "nope", "Accept": NEXUS}).status_code == 401
    token = session_token(http, served)
    assert (
        http.get(
            path, headers={"MD-SESSION-TOKEN": token, "Accept": "application/json"}
        ).status_code
        == 406
    )
    bad_type = {"MD-SESSION-TOKEN": token, "Accept": NEXUS, "Content-Type": "text/plain"}
    assert http.get(path, headers=bad_type).status_code == 415
    ok = http.get(path, headers={"MD-SESSION-TOKEN": token, "Accept": NEXUS})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith(NEXUS)


def test_platform_checks_basic_auth_and_version_headers(served: MxEnv, http: httpx.Client) -> None:
    """Platform: wrong Basic → 401; each version's Accept with its Accept-Version → 200; no or
    an unknown Accept-Version, or a version with the other version's Accept → 406; a version
    switched off in the sandbox → 406 (what MX answers since 2026-08-12)."""
    path = "/users/USR-1/members/MBR-1/oauth_window_uri"
    good = (served.client_id, served.config.api_key)
    assert http.get(path, auth=(served.client_id, "bad"), headers=PLATFORM).status_code == 401
    assert http.get(path, auth=good, headers=PLATFORM).status_code == 200
    assert http.get(path, auth=good, headers=PLATFORM_V1).status_code == 200
    for headers in (
        {"Accept": V1},
        {"Accept": "application/json"},
        {"Accept": "application/json", "Accept-Version": "v20260430"},
        {"Accept": V1, "Accept-Version": "v20250224"},
        {"Accept": "application/json", "Accept-Version": "v20111101"},
    ):
        assert http.get(path, auth=good, headers=headers).status_code == 406, headers
    served.config.platform_versions = ["v20250224"]
    assert http.get(path, auth=good, headers=PLATFORM_V1).status_code == 406
    v2 = http.get(path, auth=good, headers=PLATFORM)
    assert v2.headers["content-type"].startswith("application/json")
    served.config.platform_versions = ["v20111101"]
    v1 = http.get(path, auth=good, headers=PLATFORM_V1)
    assert v1.headers["content-type"].startswith(V1)


def test_query_rules_are_enforced(served: MxEnv, http: httpx.Client) -> None:
    """client_redirect_url needs APP; referral_source and skip_aggregation are validated."""
    path = "/users/USR-1/members/MBR-1/oauth_window_uri"
    auth = (served.client_id, served.config.api_key)
    headers = PLATFORM
    for params in (
        {"client_redirect_url": "https://a.example"},
        {"referral_source": "WEB"},
        {"skip_aggregation": "yes"},
        {"ui_message_webview_url_scheme": "x"},
        {"referral_source": "APP", "enable_app2app": "maybe"},
    ):
        assert http.get(path, auth=auth, headers=headers, params=params).status_code == 400


def test_uris_are_one_time(served: MxEnv, http: httpx.Client) -> None:
    """Opening a generated URI works once (200), then 410; tokens differ per URI."""
    served.config.uri_base = served.base_url
    path = "/users/USR-1/members/MBR-1/oauth_window_uri"
    auth = (served.client_id, served.config.api_key)
    uris = [
        http.get(path, auth=auth, headers=PLATFORM).json()["member"]["oauth_window_uri"]
        for _ in range(2)
    ]
    assert uris[0] != uris[1]
    assert http.get(uris[0]).status_code == 200
    assert http.get(uris[0]).status_code == 410


def test_admin_config_and_request_log(served: MxEnv, http: httpx.Client) -> None:
    """PUT /_sandbox/config changes faults live (bad values → 400, nothing changed);
    GET /_sandbox/requests shows the log without header values; DELETE clears it."""
    assert http.put("/_sandbox/config", json={"rate_500": 2}).status_code == 400
    assert http.put("/_sandbox/config", json={"nope": 1}).status_code == 400
    assert http.get("/_sandbox/config").json()["api_key"] == "***"
    assert http.put("/_sandbox/config", json={"rate_500": 1.0}).json()["rate_500"] == 1.0
    path = "/users/USR-1/members/MBR-1/oauth_window_uri"
    auth = (served.client_id, served.config.api_key)
    assert http.get(path, auth=auth, headers=PLATFORM).status_code == 500
    (entry,) = http.get("/_sandbox/requests").json()
    assert entry["auth"] == "Authorization"
    assert entry["status"] == 500
    assert entry["fault"] == "rate_500"
    assert served.config.api_key not in json.dumps(entry)
    assert http.delete("/_sandbox/requests").status_code == 204
    assert http.get("/_sandbox/requests").json() == []


def test_json_file_members(tmp_path: Path) -> None:
    """A members file: listed members only, is_oauth honoured, other users' members 404."""
    members = tmp_path / "members.json"
    members.write_text(
        json.dumps(
            {
                "members": [
                    {"member_guid": "MBR-a", "user_guid": "USR-1"},
                    {"member_guid": "MBR-b", "user_guid": "USR-1", "is_oauth": False},
                ]
            }
        )
    )
    sandbox = Sandbox(SandboxConfig(members_file=str(members)))
    assert _platform_status(sandbox, "USR-1", "MBR-a") == 200
    assert _platform_status(sandbox, "USR-1", "MBR-b") == 400
    assert _platform_status(sandbox, "USR-2", "MBR-a") == 404
    assert _platform_status(sandbox, "USR-1", "MBR-zzz") == 404


def test_database_members(sqlite_url: str) -> None:
    """Members read from the project's members table (models.Member rows)."""
    from models import Member
    from worker.store.db import make_engine, session_factory

    engine = make_engine(sqlite_url)
    with session_factory(engine)() as session, session.begin():
        session.add(
            Member(member_guid="MBR-db", user_guid="USR-1", institution_code="x", is_oauth=True)
        )
        session.add(
            Member(member_guid="MBR-no", user_guid="USR-1", institution_code="x", is_oauth=False)
        )
    engine.dispose()
    sandbox = Sandbox(SandboxConfig(members_db_url=sqlite_url))
    try:
        assert _platform_status(sandbox, "USR-1", "MBR-db") == 200
        assert _platform_status(sandbox, "USR-1", "MBR-no") == 400
        assert _platform_status(sandbox, "USR-1", "MBR-other") == 404
    finally:
        sandbox.close()


def test_same_seed_same_faults() -> None:
    """The fault draws come from one seeded RNG: same seed and order → same faults."""

    def statuses() -> list[int]:
        sandbox = Sandbox(SandboxConfig(rate_500=0.3, rate_503=0.3, seed=42))
        return [_platform_status(sandbox, "USR-1", f"MBR-{i}") for i in range(30)]

    first = statuses()
    assert first == statuses()
    assert {200, 500, 503} <= set(first)


def test_config_rejects_rates_over_one() -> None:
    """Stacked fault probabilities must fit in one draw."""
    with pytest.raises(ValueError, match="more than 1"):
        SandboxConfig(rate_500=0.6, rate_503=0.6)


def test_cli_flags_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """``reauth sandbox`` flags map onto SandboxConfig and reach serve()."""
    from worker.cli import main
    from worker.sandbox import server

    seen: dict[str, Any] = {}

    def fake_serve(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(server, "serve", fake_serve)
    main(["sandbox", "--port", "8123", "--latency", "0.1", "--rate-429", "0.2",
          "--expire-session-every", "5", "--seed", "7"])  # fmt: skip
    config = seen["config"]
    assert seen["port"] == 8123
    assert (config.latency, config.rate_429, config.expire_session_every, config.seed) == (
        0.1,
        0.2,
        5,
        7,
    )


def _platform_status(
    sandbox: Sandbox, user: str, member: str, headers: dict[str, str] = PLATFORM
) -> int:
    import asyncio

    async def go() -> int:
        transport = httpx.ASGITransport(app=sandbox)
        async with httpx.AsyncClient(transport=transport, base_url="http://sb") as client:
            answer = await client.get(
                f"/users/{user}/members/{member}/oauth_window_uri",
                auth=(sandbox.config.client_id, sandbox.config.api_key),
                headers=headers,
            )
            return answer.status_code

    return asyncio.run(go())


def test_member_reads_and_state_overrides(served: MxEnv, http: httpx.Client) -> None:
    """Nexus GET /members/{guid} (session, uses counted) and Platform .../status (Basic + version)
    answer the member's live state; PUT /_sandbox/members/{guid} overrides it, DELETE resets;
    unknown fields → 400."""
    token = session_token(http, served)
    nexus = {"MD-SESSION-TOKEN": token, "Accept": NEXUS}
    auth = (served.client_id, served.config.api_key)
    status_path = "/users/USR-1/members/MBR-1/status"
    assert http.get("/members/MBR-1", headers=nexus).json()["member"] == {
        "guid": "MBR-1", "connection_status": "DENIED", "is_being_aggregated": False,
        "aggregated_at": None, "successfully_aggregated_at": None, "is_oauth": True,
    }  # fmt: skip
    assert http.get(status_path, auth=auth, headers={"Accept": V1}).status_code == 406
    change = {"connection_status": "CONNECTED", "successfully_aggregated_at": "2026-01-01T00:00Z"}
    assert http.put("/_sandbox/members/MBR-1", json=change).status_code == 200
    assert http.put("/_sandbox/members/MBR-1", json={"guid": "x"}).status_code == 400
    platform = http.get(status_path, auth=auth, headers=PLATFORM_V1).json()["member"]
    assert platform["connection_status"] == "CONNECTED"
    assert platform["is_authenticated"] is True
    assert platform["successfully_aggregated_at"] == "2026-01-01T00:00Z"
    assert http.delete("/_sandbox/members/MBR-1").status_code == 204
    assert http.get("/members/MBR-1", headers=nexus).json()["member"]["connection_status"] == (
        "DENIED"
    )
    assert http.get("/members/MBR-GONE-1", headers=nexus).status_code == 404


def test_sessions_expire_after_max_uses(served: MxEnv, http: httpx.Client) -> None:
    """session_max_uses=2: two calls on a session succeed (reads count too), the third gets
    401 with code 4011 and the session is gone."""
    served.config.session_max_uses = 2
    headers = {"MD-SESSION-TOKEN": session_token(http, served), "Accept": NEXUS}
    assert http.get("/members/MBR-1", headers=headers).status_code == 200
    assert http.get("/members/MBR-1/oauth_window_uri", headers=headers).status_code == 200
    third = http.get("/members/MBR-1/oauth_window_uri", headers=headers)
    assert third.status_code == 401
    assert third.json()["error"]["code"] == 4011
    assert http.get("/members/MBR-1", headers=headers).status_code == 401


def test_sso_per_user_failure_and_nexus_not_enabled(served: MxEnv, http: httpx.Client) -> None:
    """A user id containing NOUSER is refused with sso_user_failure_status; nexus_enabled=false
    answers 404 to every token read (MX's "Nexus not enabled"), set live as a boolean."""
    ok = {"MD-API-KEY": served.config.api_key, "Accept": SSO}
    assert http.get(sso_path(served, "USR-NOUSER-1"), headers=ok).status_code == 404
    served.config.sso_user_failure_status = 403
    assert http.get(sso_path(served, "USR-NOUSER-1"), headers=ok).status_code == 403
    assert http.get(sso_path(served, "USR-2"), headers=ok).status_code == 200
    assert http.put("/_sandbox/config", json={"nexus_enabled": 0}).status_code == 400
    assert http.put("/_sandbox/config", json={"nexus_enabled": False}).status_code == 200
    assert http.get(sso_path(served, "USR-2"), headers=ok).status_code == 404


def test_blank_and_foreign_uri_markers(served: MxEnv, http: httpx.Client) -> None:
    """BLANKURI members get a null oauth_window_uri (200); FOREIGNURI members a URI on
    foreign_uri_base; Nexus refuses enable_app2app, which it does not document."""
    auth = (served.client_id, served.config.api_key)
    blank = http.get(
        "/users/USR-1/members/MBR-BLANKURI-1/oauth_window_uri", auth=auth, headers=PLATFORM
    )
    assert blank.status_code == 200
    assert blank.json()["member"] == {"guid": "MBR-BLANKURI-1", "oauth_window_uri": None}
    foreign = http.get(
        "/users/USR-1/members/MBR-FOREIGNURI-1/oauth_window_uri", auth=auth, headers=PLATFORM
    )
    assert foreign.json()["member"]["oauth_window_uri"].startswith(
        "https://auth.examplebank.test/oauth/predirect_to/MBR-FOREIGNURI-1/"
    )
    headers = {"MD-SESSION-TOKEN": session_token(http, served), "Accept": NEXUS}
    nexus = http.get(
        "/members/MBR-1/oauth_window_uri", headers=headers, params={"enable_app2app": "false"}
    )
    assert nexus.status_code == 400


def test_partner_ids_in_v20250224_paths_only(tmp_path: Path) -> None:
    """File members with a partner member_id and user_id: v20250224 finds them by ids (and
    answers the guid); v20111101 knows only guids."""
    members = tmp_path / "members.json"
    row = {"member_guid": "MBR-p", "user_guid": "USR-p", "user_id": "u-9", "member_id": "m-9"}
    members.write_text(json.dumps([row]))
    sandbox = Sandbox(SandboxConfig(members_file=str(members)))
    assert _platform_status(sandbox, "u-9", "m-9") == 200
    assert _platform_status(sandbox, "USR-p", "MBR-p") == 200
    assert _platform_status(sandbox, "u-9", "m-9", headers=PLATFORM_V1) == 404
