"""``reauth demo``: the whole flow on embedded defaults, with no service running.

SQLite (the configured database, ``reauth.db`` by default), migrations, about 50 seeded members
covering every reason, skip_aggregation branch and channel, the MX sandbox in process on a free
loopback port, a full scan through the real Celery task bodies (inline followups instead of a
broker), notifications delivered to the file sink, and a table with a summary. Then the
webhook-driven case (:mod:`worker.demo_webhook`): a member breaks and reconnects in the sandbox,
which tells `reauth serve` through MX webhooks; it is notified and its reminders stop, no scan.

Seeding only inserts members that are missing, so a second run finds every notified member
waiting for the user and the scan creates no new notification; the webhook member breaks again,
a new episode with its own single notification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from models import Attempt
from worker import demo_webhook
from worker.app import jobs
from worker.clock import utc_now
from worker.config import NotifySink, Settings
from worker.runtime import Runtime
from worker.store import attempts, leases, members, migrate, notifications
from worker.store.db import session_scope

DEMO_REDIRECT = "https://app.example.com/oauth/complete"
DEMO_SCHEME = "reauthdemo"


@dataclass(frozen=True)
class Seed:
    guid: str
    note: str
    fields: dict[str, Any]


def seeds(now: datetime) -> list[Seed]:
    """The demo population: each row says what it exercises."""
    h = timedelta(hours=1)
    out: list[Seed] = []

    def add(note: str, n: int, **fields: Any) -> None:
        for i in range(n):
            guid = f"MBR-demo-{len(out) + 1:03d}"
            if "marker" in fields:
                guid = f"MBR-demo-{fields['marker']}-{len(out) + 1:03d}"
            out.append(Seed(guid, note, {k: v for k, v in fields.items() if k != "marker"}))
            del i

    stale = now - 72 * h
    add("expired, stale data", 5, connection_status="EXPIRED", successfully_aggregated_at=stale)
    add("revoked: DENIED", 4, connection_status="DENIED", successfully_aggregated_at=stale)
    add("revoked: PREVENTED", 2, connection_status="PREVENTED")
    add("revoked: IMPAIRED", 2, connection_status="IMPAIRED")
    add("revoked: IMPORTED", 2, connection_status="IMPORTED")
    add("revoked, aggregation running", 3, connection_status="DENIED", is_being_aggregated=True)
    add(
        "expired, aggregated 2 h ago",
        3,
        connection_status="EXPIRED",
        successfully_aggregated_at=now - 2 * h,
    )
    add("expired, APP channel", 4, connection_status="EXPIRED", channel="APP")
    add(
        "revoked, APP channel",
        2,
        connection_status="DENIED",
        channel="APP",
        successfully_aggregated_at=now - 2 * h,
    )
    add(
        "abandoned: oauth PENDING 2 h",
        3,
        connection_status="CREATED",
        oauth_status="PENDING",
        oauth_started_at=now - 2 * h,
    )
    add(
        "abandoned: CREATED, no oauth status",
        2,
        connection_status="CREATED",
        oauth_started_at=now - 2 * h,
    )
    add(
        "abandoned: user CANCELLED",
        2,
        connection_status="PENDING",
        oauth_status="ERRORED",
        oauth_error_reason="CANCELLED",
        oauth_started_at=now - 3 * h,
        channel="APP",
    )
    add(
        "abandoned: SESSION_ERROR",
        1,
        connection_status="PENDING",
        oauth_status="ERRORED",
        oauth_error_reason="SESSION_ERROR",
        oauth_started_at=now - 3 * h,
    )
    add(
        "not yet abandoned (10 min)",
        2,
        connection_status="CREATED",
        oauth_status="PENDING",
        oauth_started_at=now - timedelta(minutes=10),
    )
    add("connected: nothing to do", 5, connection_status="CONNECTED")
    add("challenged (MFA): not OAuth re-auth", 1, connection_status="CHALLENGED")
    add("not an OAuth member", 2, connection_status="EXPIRED", is_oauth=False)
    add("MX: member cannot use OAuth", 2, connection_status="DENIED", marker="NOOAUTH")
    add("MX: member gone (404)", 1, connection_status="EXPIRED", marker="GONE")
    add("MX answers another guid", 1, connection_status="EXPIRED", marker="MOVED")
    # Processed in a second pass with REAUTH_AGGREGATE_AFTER_REAUTH=false (a global setting), so
    # the demo also shows the disabled_by_config branch of skip_aggregation.
    add(
        "expired, aggregation disabled by config",
        2,
        connection_status="EXPIRED",
        successfully_aggregated_at=stale,
        marker="NOAGG",
    )
    return out


def _seed(session: Session, population: list[Seed], now: datetime) -> int:
    existing = set(members.by_guids(session, [s.guid for s in population]))
    added = 0
    for i, seed in enumerate(population):
        if seed.guid in existing:
            continue
        values: dict[str, Any] = {
            "is_oauth": True,
            "channel": "BROWSER",
            "institution_code": ("chase", "wells_fargo", "mx_bank")[i % 3],
            **seed.fields,
        }
        m = members.add_new(
            session,
            {"member_guid": seed.guid, "user_guid": f"USR-demo-{i // 2:03d}", **values},
            now=now,
        )
        if "NOAGG" in seed.guid:
            m.next_attempt_at = None  # processed by the second pass only
        added += 1
    return added


def demo_settings(base: Settings, sandbox_url: str, sso_url: str) -> Settings:
    """The configured settings pointed at the in-process sandbox, with demo redirects."""
    from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

    update: dict[str, Any] = {
        "mx_base_url": sandbox_url,
        "mx_sso_base_url": sso_url,
        # The in-process sandbox serves plain http on loopback.
        "mx_client_id": DEFAULT_CLIENT_ID,
        "mx_api_key": base.mx_api_key.__class__(DEFAULT_API_KEY),
        "app_redirect_url": DEMO_REDIRECT,
        "app_url_scheme": DEMO_SCHEME,
        "allowed_redirect_prefixes": [DEMO_REDIRECT],
        "allow_insecure_urls": True,  # the in-process sandbox speaks plain http on loopback
    }
    if base.notify_sink is None and base.redis_url is None:
        update["notify_sink"] = NotifySink.FILE
    return base.model_copy(update=update)


def serve_settings(settings: Settings, sandbox_url: str, port: int) -> Settings:
    """The demo settings plus reconnect links served on ``127.0.0.1:port``, signed with a key
    made for this run (the links work while the demo serves them)."""
    import secrets

    from pydantic import SecretStr

    return settings.model_copy(
        update={
            "public_url": f"http://127.0.0.1:{port}",
            "reconnect_secrets": [SecretStr(secrets.token_hex(32))],
            "mx_oauth_origins": [sandbox_url],
        }
    )


def run_demo(
    base: Settings,
    *,
    serve_port: int | None = None,
    while_serving: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the demo and return what the CLI prints (rows and summary).

    With ``serve_port``, messages carry ``reconnect_url``s, and after the scan the sandbox and
    `reauth serve`'s app stay up (the app on ``serve_port``) while ``while_serving`` runs with
    the result, which then lists a fresh ``reconnect_url`` per open episode.
    """
    from worker.sandbox.config import SandboxConfig
    from worker.sandbox.server import running_sandbox

    migrate.upgrade(base.database_url)
    started = utc_now()
    population = seeds(started)
    with running_sandbox(SandboxConfig(latency=0.01, jitter=0.01)) as sandbox:
        settings = demo_settings(base, sandbox.base_url, sandbox.sso_base_url)
        if serve_port is not None:
            # Links lead to the sandbox's own OAuth window, so a person can click through.
            sandbox.config.uri_base = sandbox.base_url
            settings = serve_settings(settings, sandbox.base_url, serve_port)
        rt = Runtime(settings, inline=True)
        try:
            with session_scope(rt.sessions) as s:
                added = _seed(s, population, started)
            scan = jobs.scan(rt, clock=utc_now, trigger="demo").as_dict()
            _second_pass(rt, population)
            with session_scope(rt.sessions) as s:
                rows = _rows(s, population, since=started)
                notified_now = notifications.created_since(s, started)
            mx_calls = len(
                [r for r in sandbox.requests() if "oauth_window_uri" in r.get("path", "")]
            )
            hook = demo_webhook.run(rt, settings, sandbox)
            with session_scope(rt.sessions) as s:
                totals = {k: v for k, v in notifications.counts_by_status(s).items() if v}
        finally:
            rt.close()
        result = {
            "rows": rows,
            "summary": {
                "members_seeded_now": added,
                "members": len(population),
                "scan": scan,
                "mx_calls": mx_calls,
                "notifications_created_now": int(notified_now or 0),
                "outbox": totals,
            },
            "webhook": hook,
            "backends": _backends(settings),
        }
        # The end of the demo: some people click and complete, some abandon; the funnel.
        from worker import demo_funnel

        result["funnel"] = demo_funnel.simulate(settings, sandbox)
        if serve_port is not None and while_serving is not None:
            _serve(settings, serve_port, result, while_serving)
    return result


def _serve(
    settings: Settings,
    port: int,
    result: dict[str, Any],
    while_serving: Callable[[dict[str, Any]], None],
) -> None:
    """Serve reconnect links for every open episode until ``while_serving`` returns."""
    from worker.service.links import reconnect_url
    from worker.serving import serve_in_thread
    from worker.web.app import create_app

    web = Runtime(settings)
    try:
        now = utc_now()
        with session_scope(web.sessions) as s:
            links = [
                {"member": guid, "reconnect_url": reconnect_url(settings, nid, now)}
                for nid, guid in notifications.latest_open(s)
            ]
        result["links"] = links
        with serve_in_thread(create_app(web), port=port, name="reauth-serve"):
            while_serving(result)
    finally:
        web.close()


def _second_pass(rt: Runtime, population: list[Seed]) -> None:
    """Process the NOAGG members as a deployment with REAUTH_AGGREGATE_AFTER_REAUTH=false."""
    guids = [p.guid for p in population if "NOAGG" in p.guid]
    owner = leases.new_owner()
    with session_scope(rt.sessions) as s:
        ids = [m.id for m in members.by_guids(s, guids).values() if m.episode == 0]
        if ids:
            members.claim_due(
                s,
                now=utc_now(),
                owner=owner,
                lease=rt.settings.claim_lease,
                limit=len(ids),
                member_ids=ids,
            )
    if not ids:
        return
    no_agg = Runtime(rt.settings.model_copy(update={"aggregate_after_reauth": False}), inline=True)
    try:
        jobs.regenerate(no_agg, ids, owner, clock=utc_now, force=False, trigger="demo")
    finally:
        no_agg.close()


def _rows(session: Session, population: list[Seed], *, since: datetime) -> list[dict[str, Any]]:
    by_guid = members.by_guids(session, [p.guid for p in population])
    latest: dict[int, Attempt] = {a.member_id: a for a in attempts.since(session, since)}
    rows = []
    for p in population:
        m = by_guid[p.guid]
        a = latest.get(m.id)
        rows.append(
            {
                "member": m.member_guid,
                "case": p.note,
                "reason": m.reauth_reason or "-",
                "skip_aggregation": "-" if a is None else str(a.skip_aggregation).lower(),
                "why": "-" if a is None else a.skip_aggregation_why,
                "channel": m.channel if a is None else a.referral_source,
                "redirect": "-" if a is None else ("yes" if a.redirect_used else "no"),
                "outcome": a.outcome if a is not None else f"no call ({m.reauth_state})",
                "state": m.reauth_state,
            }
        )
    return rows


def _backends(settings: Settings) -> dict[str, str]:
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    db = f"{url.get_backend_name()} ({Path(url.database or '').resolve()})"
    if url.get_backend_name() != "sqlite":
        db = url.render_as_string(hide_password=True)
    sink = settings.effective_notify_sink.value
    if sink == "file":
        sink += f" ({Path(settings.notify_file).resolve()})"
    return {
        "database": db,
        "broker": "none: tasks run in this process (inline)",
        "redis": settings.redis_url or "none: in-process session cache and rate limit",
        "mx": f"sandbox in process at {settings.mx_base_url}",
        "notifications": sink,
    }
