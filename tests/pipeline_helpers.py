"""A population of members whose expected treatment is written down independently of the policy,
used as the oracle by the pipeline and end-to-end tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from models import Member, Notification
from worker.clock import utc_now
from worker.runtime import Runtime

REDIRECT = "https://app.example.com/oauth/complete"
SCHEME = "exampleapp"
H = timedelta(hours=1)


@dataclass(frozen=True)
class Kind:
    """One kind of member and what must happen to it."""

    name: str
    fields: dict[str, Any]
    notified: bool
    reason: str | None = None
    skip: bool | None = None
    why: str | None = None
    channel: str = "BROWSER"
    marker: str = ""


def kinds(now: datetime) -> list[Kind]:
    stale = now - 72 * H
    return [
        Kind(
            "expired",
            {"connection_status": "EXPIRED", "successfully_aggregated_at": stale},
            True,
            "expired",
            False,
            "stale_data",
        ),
        Kind("denied", {"connection_status": "DENIED"}, True, "revoked", False, "stale_data"),
        Kind(
            "prevented-aggregating",
            {"connection_status": "PREVENTED", "is_being_aggregated": True},
            True,
            "revoked",
            True,
            "aggregation_in_progress",
        ),
        Kind(
            "impaired-recent",
            {"connection_status": "IMPAIRED", "successfully_aggregated_at": now - 2 * H},
            True,
            "revoked",
            True,
            "recently_aggregated",
        ),
        Kind(
            "imported-app",
            {"connection_status": "IMPORTED", "channel": "APP"},
            True,
            "revoked",
            False,
            "stale_data",
            "APP",
        ),
        Kind(
            "abandoned-pending",
            {
                "connection_status": "CREATED",
                "oauth_status": "PENDING",
                "oauth_started_at": now - 2 * H,
            },
            True,
            "abandoned",
            False,
            "stale_data",
        ),
        Kind(
            "abandoned-cancelled-app",
            {
                "connection_status": "PENDING",
                "oauth_status": "ERRORED",
                "oauth_error_reason": "CANCELLED",
                "oauth_started_at": now - 2 * H,
                "channel": "APP",
            },
            True,
            "abandoned",
            False,
            "stale_data",
            "APP",
        ),
        Kind(
            "young-start",
            {
                "connection_status": "CREATED",
                "oauth_status": "PENDING",
                "oauth_started_at": now - timedelta(minutes=5),
            },
            False,
        ),
        Kind("connected", {"connection_status": "CONNECTED"}, False),
        Kind("challenged", {"connection_status": "CHALLENGED"}, False),
        Kind("not-oauth", {"connection_status": "EXPIRED", "is_oauth": False}, False),
        Kind(
            "errored-denied",
            {
                "connection_status": "PENDING",
                "oauth_status": "ERRORED",
                "oauth_error_reason": "DENIED",
                "oauth_started_at": now - 2 * H,
            },
            False,
        ),
        Kind("mx-not-oauth", {"connection_status": "DENIED"}, False, marker="NOOAUTH"),
        Kind("mx-gone", {"connection_status": "EXPIRED"}, False, marker="GONE"),
    ]


def populate(engine: Engine, n: int, now: datetime) -> dict[str, Kind]:
    """Insert ``n`` members cycling through :func:`kinds`; returns guid → kind."""
    ks = kinds(now)
    rows, expected = [], {}
    for i in range(n):
        k = ks[i % len(ks)]
        guid = f"MBR-{k.marker + '-' if k.marker else ''}{i:06d}"
        expected[guid] = k
        rows.append(
            {
                "member_guid": guid,
                "user_guid": f"USR-{i % 97:04d}",
                "user_id": None,
                "institution_code": ("chase", "mx_bank")[i % 2],
                "is_oauth": True,
                "channel": "BROWSER",
                "is_being_aggregated": False,
                "reauth_state": "idle",
                "episode": 0,
                "reminders_sent": 0,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
                "connection_status": None,
                "oauth_status": None,
                "oauth_error_reason": None,
                "oauth_started_at": None,
                "successfully_aggregated_at": None,
                **k.fields,
            }
        )
    with engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(insert(Member), rows[start : start + 1000])
    return expected


def outbox_by_guid(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for guid, payload in conn.execute(
            select(Member.member_guid, Notification.payload).join(
                Notification, Notification.member_id == Member.id
            )
        ):
            out.setdefault(guid, []).append(payload)
    return out


def check_outcome(
    expected: dict[str, Kind],
    outbox: dict[str, list[dict[str, Any]]],
    requests: list[dict[str, Any]],
) -> None:
    """Every eligible member has exactly one notification with the right reason and parameters
    (as MX received them, per the sandbox's request log); no ineligible member has any."""
    calls: dict[str, list[dict[str, Any]]] = {}
    for r in requests:
        path = r.get("path", "")
        if path.endswith("/oauth_window_uri") and r.get("status") == 200:
            guid = path.split("/members/")[1].split("/")[0]
            calls.setdefault(guid, []).append(r.get("query") or {})
    for guid, k in expected.items():
        got = outbox.get(guid, [])
        if not k.notified:
            assert got == [], f"{guid} ({k.name}) must not be notified"
            continue
        assert len(got) == 1, f"{guid} ({k.name}) has {len(got)} notifications"
        msg = got[0]
        assert msg["reason"] == k.reason, (guid, k.name, msg["reason"])
        assert msg["skip_aggregation"] is k.skip, (guid, k.name)
        assert msg["channel"] == k.channel
        assert msg["episode"] == 1
        assert msg["reminder"] == 1
        assert msg["idempotency_key"] == f"{guid}:1:1"
        sent = calls.get(guid)
        assert sent, f"no successful MX call logged for {guid}"
        q = sent[-1]
        assert q.get("referral_source") == k.channel
        assert str(q.get("skip_aggregation")).lower() == str(k.skip).lower()
        if k.channel == "APP":
            assert q.get("client_redirect_url") == REDIRECT
            assert q.get("ui_message_webview_url_scheme") == SCHEME
        else:
            assert "client_redirect_url" not in q
            assert "ui_message_webview_url_scheme" not in q


def make_settings(db_url: str, sb: Any, **extra: Any) -> Any:
    """Settings for the pipeline against a running sandbox ``sb``, file sink, small batches."""
    from worker.config import load_settings
    from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

    values: dict[str, Any] = {
        "database_url": db_url,
        "mx_base_url": sb.base_url,
        "mx_sso_base_url": sb.sso_base_url,
        "allow_insecure_urls": True,  # the sandbox serves plain http on loopback
        "mx_client_id": DEFAULT_CLIENT_ID,
        "mx_api_key": DEFAULT_API_KEY,
        "app_redirect_url": REDIRECT,
        "app_url_scheme": SCHEME,
        "allowed_redirect_prefixes": [REDIRECT],
        "notify_sink": "file",
        "batch_size": 25,
    }
    return load_settings(**{**values, **extra})


def scan_now(rt: Runtime, *, reason: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """One scan through the job body (the runtime's follow-ups decide inline or Celery)."""
    from worker.app import jobs
    from worker.core.policy import Reason

    result = jobs.scan(rt, clock=utc_now, reason=Reason(reason) if reason else None, **kwargs)
    return result.as_dict()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    """Run the CLI in process; returns (exit code, parsed --json output or text)."""
    from worker.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    try:
        return code, json.loads(out.out)
    except json.JSONDecodeError:
        return code, out.out + out.err
