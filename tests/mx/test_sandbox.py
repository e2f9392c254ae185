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
PLATFORM = "application/vnd.mx.api.v1+json"


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


def test_platform_checks_basic_auth_and_media_type(served: MxEnv, http: httpx.Client) -> None:
    """Platform: wrong Basic → 401; Accept other than vnd.mx.api.v1+json → 406."""
    path = "/users/USR-1/members/MBR-1/oauth_window_uri"
    good = (served.client_id, served.config.api_key)
    assert (
        http.get(path, auth=(served.client_id, "bad"), headers={"Accept": PLATFORM}).status_code
        == 401
    )
    assert http.get(path, auth=good, headers={"Accept": "application/json"}).status_code == 406
    assert http.get(path, auth=good, headers={"Accept": PLATFORM}).status_code == 200


def test_query_rules_are_enforced(served: MxEnv, http: httpx.Client) -> None:
    """client_redirect_url needs APP; referral_source and skip_aggregation are validated."""
    path = "/users/USR-1/members/MBR-1/oauth_window_uri"
    auth = (served.client_id, served.config.api_key)
    headers = {"Accept": PLATFORM}
    for params in (
        {"client_redirect_url": "https://a.example"},
        {"referral_source": "WEB"},
        {"skip_aggregation": "yes"},
        {"ui_message_webview_url_scheme": "x"},
    ):
        assert http.get(path, auth=auth, headers=headers, params=params).status_code == 400


def test_uris_are_one_time(served: MxEnv, http: httpx.Client) -> None:
    """Opening a generated URI works once (200), then 410; tokens differ per URI."""
    served.config.uri_base = served.base_url
    path = "/users/USR-1/members/MBR-1/oauth_window_uri"
    auth = (served.client_id, served.config.api_key)
    uris = [
        http.get(path, auth=auth, headers={"Accept": PLATFORM}).json()["member"]["oauth_window_uri"]
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
    assert http.get(path, auth=auth, headers={"Accept": PLATFORM}).status_code == 500
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


def _platform_status(sandbox: Sandbox, user: str, member: str) -> int:
    import asyncio

    async def go() -> int:
        transport = httpx.ASGITransport(app=sandbox)
        async with httpx.AsyncClient(transport=transport, base_url="http://sb") as client:
            answer = await client.get(
                f"/users/{user}/members/{member}/oauth_window_uri",
                auth=(sandbox.config.client_id, sandbox.config.api_key),
                headers={"Accept": PLATFORM},
            )
            return answer.status_code

    return asyncio.run(go())
