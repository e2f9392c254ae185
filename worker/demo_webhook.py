"""The webhook-driven case of ``reauth demo``: a member breaks and reconnects, no scan involved.

After the demo's scan, one more member (``MBR-demo-HOOK-<run>``, CONNECTED) is driven by MX
webhooks alone. `reauth serve`'s app runs in this process on a free loopback port with HTTP Basic
credentials made for this run; the in-process sandbox is pointed at its ``/mx/webhooks`` and
then, like MX:

1. the member's status turns DENIED in the sandbox, which posts CONNECTION_STATUS and MEMBER
   webhooks; the intake stores them, answers 204, and (inline follow-ups, as on embedded
   defaults) applies them: the member is read from MX, its episode opens, it is due now, and a
   regenerate batch notifies it (file sink) with ``trigger=webhook``;
2. the member reconnects (the sandbox's status back to CONNECTED: a MEMBER ``updated`` webhook);
   the apply reads MX, the episode ends through the one decision writer: the next reminder is
   unscheduled and any undelivered one is canceled.

Each run uses a member of its own: MX's bodies carry no event id or timestamp, so the same
member breaking the same way again within REAUTH_MX_WEBHOOK_DEDUPE_WINDOW (48 h) would post
byte-identical bodies, which the inbox rightly stores once and does not apply again. A second run
therefore adds one member and its one notification; nothing earlier is notified again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from worker.clock import utc_now
from worker.config import Settings
from worker.runtime import Runtime
from worker.store import attempts, members, notifications
from worker.store.db import session_scope

if TYPE_CHECKING:
    from worker.sandbox.server import RunningSandbox

#: Prefix of the webhook member's guid; each run adds its start time (see the module doc).
HOOK_PREFIX = "MBR-demo-HOOK-"
HOOK_USER = "USR-demo-hook"
WEBHOOK_USER = "mx-demo"
#: How long the demo waits for the sandbox's webhooks to be delivered and applied.
WAIT_SECONDS = 30.0


def _seed(rt: Runtime, guid: str, now: datetime) -> None:
    """The webhook member, CONNECTED and idle."""
    with session_scope(rt.sessions) as s:
        if guid not in members.by_guids(s, [guid]):
            members.add_new(
                s,
                {
                    "member_guid": guid, "user_guid": HOOK_USER, "is_oauth": True,
                    "channel": "BROWSER", "institution_code": "mx_bank",
                    "connection_status": "CONNECTED",
                },
                now=now,
            )  # fmt: skip


def _look(rt: Runtime, guid: str) -> dict[str, Any]:
    """The member as stored now, with its current episode's notifications and attempts."""
    with session_scope(rt.sessions) as s:
        m = members.by_guids(s, [guid])[guid]
        notes = [
            n for n in notifications.for_member(s, m.id) if n.payload.get("episode") == m.episode
        ]
        tried = [a for a in attempts.for_member(s, m.id) if a.episode == m.episode]
        return {
            "state": m.reauth_state,
            "reason": m.reauth_reason,
            "episode": m.episode,
            "connection_status": m.connection_status,
            "next_reminder_at": m.next_attempt_at,
            "notifications": {str(n.id): n.status for n in notes},
            "attempt_triggers": sorted({a.trigger for a in tried}),
        }


def _wait(sandbox: RunningSandbox, rt: Runtime, guid: str,
          done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:  # fmt: skip
    """Wait for the sandbox's deliveries (each applied inline by the intake) and ``done``."""
    deadline = time.monotonic() + WAIT_SECONDS
    sandbox.sandbox.webhooks.wait(WAIT_SECONDS)
    while True:
        seen = _look(rt, guid)
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo: the webhook case did not reach {what}: {seen}")
        time.sleep(0.05)


def run(rt: Runtime, settings: Settings, sandbox: RunningSandbox) -> dict[str, Any]:
    """Drive the webhook case; returns its story (steps) and what it did this run."""
    from worker.mx import MemberRequest
    from worker.serving import serve_in_thread
    from worker.web.app import create_app

    started = utc_now()
    guid = f"{HOOK_PREFIX}{started:%Y%m%dT%H%M%S%f}"
    _seed(rt, guid, started)
    password = secrets.token_urlsafe(24)
    web_settings = settings.model_copy(
        update={"mx_webhook_username": WEBHOOK_USER, "mx_webhook_password": SecretStr(password)}
    )
    sb = sandbox.sandbox
    # A run starts from a member connected in MX as well (the sandbox is fresh per run).
    sb.set_member_state(guid, connection_status="CONNECTED", is_being_aggregated=False)
    # MX knows which user a member belongs to; the sandbox learns it on the first read.
    rt.run(rt.mx.read_member(MemberRequest(guid, HOOK_USER)))
    first_request = len(sandbox.requests())
    # `reauth serve` with inline follow-ups (there is no broker on embedded defaults): the
    # intake applies what it stored right after the commit. No lifespan: its MX client lives
    # on the runtime's own loop (the apply's), and web.close() closes it there.
    web = Runtime(web_settings, inline=True)
    steps: list[dict[str, Any]] = []
    try:
        with serve_in_thread(create_app(web), name="reauth-serve", lifespan="off") as port:
            sb.config.update(
                {"webhook_url": f"http://127.0.0.1:{port}/mx/webhooks",
                 "webhook_username": WEBHOOK_USER, "webhook_password": password,
                 "webhook_retry_seconds": 0.2}
            )  # fmt: skip
            sent = len(sb.webhooks.attempts)
            sb.set_member_state(guid, connection_status="DENIED")
            broke = _wait(
                sandbox, rt, guid,
                lambda m: m["state"] == "awaiting_user"
                and "sent" in m["notifications"].values(),
                "a notification",
            )  # fmt: skip
            steps.append(_step("status DENIED", sb.webhooks.attempts[sent:], broke))
            sent = len(sb.webhooks.attempts)
            sb.set_member_state(guid, connection_status="CONNECTED")
            back = _wait(sandbox, rt, guid, lambda m: m["state"] == "idle", "the episode's end")
            steps.append(_step("status CONNECTED", sb.webhooks.attempts[sent:], back))
    finally:
        sb.config.update({"webhook_url": ""})
        web.close()
    requests = sandbox.requests()[first_request:]
    return {
        "member": guid,
        "episode": broke["episode"],
        "steps": steps,
        "notifications_created_now": len(back["notifications"]),
        "notification_statuses": sorted(back["notifications"].values()),
        "attempt_triggers": back["attempt_triggers"],
        "reminder_was_due_at": _iso(broke["next_reminder_at"]),
        "reminder_due_at_end": _iso(back["next_reminder_at"]),
        "mx_member_reads": sum(1 for r in requests if r.get("path", "").endswith(guid)),
        "mx_uri_calls": sum(1 for r in requests if "oauth_window_uri" in r.get("path", "")),
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _step(what: str, posted: list[tuple[str, int]], member: dict[str, Any]) -> dict[str, Any]:
    return {
        "sandbox": what,
        "webhooks": [f"{kind} {status}" for kind, status in posted],
        "state": member["state"],
        "reason": member["reason"] or "-",
        "episode": member["episode"],
        "next_reminder": (
            "none"
            if member["next_reminder_at"] is None
            else f"{member['next_reminder_at']:%Y-%m-%d %H:%M} UTC"
        ),
        "notifications": sorted(member["notifications"].values()),
    }
