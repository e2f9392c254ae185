"""What the MX client's answers do in the pipeline (existing pipeline code, real sandbox).

* a 406 (MX no longer accepts the client's API version) pauses every MX call without spending a
  member's attempt;
* a URI with userinfo, whitespace or control characters, over http without
  REAUTH_ALLOW_INSECURE_URLS, or outside REAUTH_MX_URI_HOSTS is never stored or sent;
* a blank URI makes the member not_oauth_capable at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from models import Attempt, Member, Notification
from worker.clock import utc_now
from worker.config import MxApi, MxApiVersion
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.service.regenerate import BatchResult, regenerate_batch
from worker.store.db import session_scope
from worker.store.leases import new_owner
from worker.store.locks import mx_paused
from worker.store.members import claim_due


@contextmanager
def variant(runtime: Runtime, **update: Any) -> Iterator[Runtime]:
    """The test runtime with some settings changed (and an optional ASGI transport)."""
    transport = update.pop("mx_transport", None)
    rt = Runtime(runtime.settings.model_copy(update=update), mx_transport=transport)
    try:
        yield rt
    finally:
        rt.close()


def seed(rt: Runtime, guids: list[str], now: datetime) -> None:
    rows = [
        {
            "member_guid": guid,
            "user_guid": f"USR-{i}",
            "institution_code": "mxbank",
            "is_oauth": True,
            "connection_status": "DENIED",
            "reauth_state": "idle",
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for i, guid in enumerate(guids)
    ]
    with rt.engine.begin() as conn:
        conn.execute(insert(Member), rows)


def one_batch(rt: Runtime) -> BatchResult:
    owner = new_owner()
    with rt.sessions.begin() as s:
        page = claim_due(s, now=utc_now(), owner=owner, lease=timedelta(minutes=2), limit=100)
    return regenerate_batch(rt, page.ids, owner, clock=utc_now)


def members(rt: Runtime) -> dict[str, tuple[str, int, str | None, str | None]]:
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(
                Member.member_guid,
                Member.reauth_state,
                Member.attempts,
                Member.oauth_window_uri,
                Member.claim_owner,
            )
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def count(rt: Runtime, model: Any) -> int:
    with rt.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)) or 0)


def test_406_pauses_every_mx_call_without_spending_an_attempt(
    runtime: Runtime, sandbox: RunningSandbox
) -> None:
    """Platform v20111101 after MX stopped accepting it: the batch stops at the first 406, its
    claims are released, no member's attempt counter moves, MX calls pause for every worker,
    and nothing is notified."""
    sandbox.config.platform_versions = ["v20250224"]
    with variant(runtime, mx_api=MxApi.PLATFORM, mx_api_version=MxApiVersion.V20111101) as rt:
        seed(rt, [f"MBR-v{i}" for i in range(6)], utc_now())
        result = one_batch(rt)
        assert result.configuration_error is not None
        assert "MxRequestRefused" in result.configuration_error
        assert "406" in result.configuration_error
        state = members(rt)
        assert {(s, a, claim) for s, a, _, claim in state.values()} == {("idle", 0, None)}
        assert count(rt, Notification) == 0
        with session_scope(rt.sessions) as s:
            assert mx_paused(s, utc_now()) is not None
        statuses = {r["status"] for r in sandbox.requests()}
        assert statuses == {406}


@pytest.mark.parametrize(
    ("uri_base", "update"),
    [
        ("https://int-app.moneydesktop.com@evil.example", {}),
        ("https://int-app.moneydesktop.com/ x", {}),
        ("https://int-app.moneydesktop.com/\x1b", {}),
        ("https://auth.examplebank.test", {"mx_uri_hosts": ["moneydesktop.com", "mx.com"]}),
    ],
    ids=["userinfo", "whitespace", "control", "host-not-allowed"],
)
def test_refused_uris_are_never_stored_or_sent(
    runtime: Runtime, sandbox: RunningSandbox, uri_base: str, update: dict[str, Any]
) -> None:
    """MX answers a deceptive or broken URI: the attempt is recorded (UnsafeOAuthUri), the
    member gives up (logged at error level), and the URI is neither stored nor notified."""
    sandbox.config.uri_base = uri_base
    with variant(runtime, **update) as rt:
        seed(rt, ["MBR-u1", "MBR-u2"], utc_now())
        result = one_batch(rt)
        assert result.configuration_error is None
        assert count(rt, Notification) == 0
        assert {(s, uri) for s, _, uri, _ in members(rt).values()} == {("gave_up", None)}
        with rt.engine.connect() as conn:
            errors = set(conn.scalars(select(Attempt.error_class)))
        assert errors == {"UnsafeOAuthUri"}


def test_http_uri_without_the_insecure_switch_is_never_stored_or_sent(
    runtime: Runtime, sandbox: RunningSandbox
) -> None:
    """Production settings (https MX, REAUTH_ALLOW_INSECURE_URLS off) and MX answering an http
    URI: refused; with the switch on (the sandbox's case) the same URI goes out."""
    sandbox.config.uri_base = "http://int-app.moneydesktop.com"
    asgi = httpx.ASGITransport(app=sandbox.sandbox)
    secure = {
        "mx_base_url": "https://mx.sandbox.test",
        "mx_sso_base_url": "https://mx.sandbox.test/sso",
        "allow_insecure_urls": False,
        "mx_transport": asgi,
    }
    with variant(runtime, **secure) as rt:
        seed(rt, ["MBR-h1"], utc_now())
        one_batch(rt)
        assert count(rt, Notification) == 0
        assert members(rt)["MBR-h1"][0] == "gave_up"
    with variant(runtime) as rt:
        seed(rt, ["MBR-h2"], utc_now())
        one_batch(rt)
        assert count(rt, Notification) == 1


def test_blank_uri_marks_the_member_not_oauth_capable(
    runtime: Runtime, sandbox: RunningSandbox
) -> None:
    """MX answers 200 with a null URI: not_oauth_capable on the first attempt, nothing sent."""
    seed(runtime, ["MBR-BLANKURI-1"], utc_now())
    one_batch(runtime)
    assert members(runtime)["MBR-BLANKURI-1"][:3] == ("not_oauth_capable", 0, None)
    assert count(runtime, Notification) == 0
