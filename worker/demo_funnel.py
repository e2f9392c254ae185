"""The end of ``reauth demo``: simulated people use their links, then a funnel summary.

People are played over HTTP, through the same doors a browser uses: ``reauth serve``'s app
(on a free loopback port, for the length of the simulation) and the in-process sandbox's OAuth
window. For each open link, a fixed rule on the member guid picks a fate: *complete* (press
Reconnect, Authorize in the window, the page reports success and the service confirms it with
MX), *abandon* (press, Cancel, the page reports ``CANCELLED``) or *ignore*. Members who
clicked before (an earlier demo run) are left alone, so a second run changes nothing. The
summary comes from ``reauth report``'s service, i.e. from the episodes table.
"""

from __future__ import annotations

import secrets
import socket
import zlib
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import SecretStr

from worker.clock import utc_now
from worker.config import Settings
from worker.runtime import Runtime
from worker.service import report
from worker.service.links import reconnect_url
from worker.service.report_html import hours
from worker.store import clicks, members, notifications
from worker.store.db import session_scope

#: One fate per member, by a checksum of its guid: about 2 in 5 complete, 1 in 5 abandons.
FATES = ("complete", "ignore", "abandon", "complete", "ignore")
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def fate(member_guid: str) -> str:
    return FATES[zlib.crc32(member_guid.encode()) % len(FATES)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def simulate(settings: Settings, sandbox: Any) -> dict[str, Any]:
    """Play the people, then return the funnel summary and what the people did."""
    from worker.serving import serve_in_thread
    from worker.web.app import create_app

    sandbox.config.uri_base = sandbox.base_url  # links open the sandbox's own OAuth window
    port = _free_port()
    settings = settings.model_copy(
        update={
            "public_url": f"http://127.0.0.1:{port}",
            "reconnect_secrets": [SecretStr(secrets.token_hex(32))],
            "mx_oauth_origins": [sandbox.base_url],
        }
    )
    web = Runtime(settings)
    played = {"complete": 0, "abandon": 0, "ignore": 0}
    try:
        now = utc_now()
        with session_scope(web.sessions) as s:
            links = notifications.latest_open(s)
            found = members.by_guids(s, [guid for _, guid in links])
            todo = [
                (nid, guid)
                for nid, guid in links
                if not clicks.count_since(s, found[guid].id, _EPOCH)
            ]
        with (
            serve_in_thread(create_app(web), port=port, name="demo-people"),
            httpx.Client(timeout=30) as http,
        ):
            for nid, guid in todo:
                what = fate(guid)
                played[what] += 1
                url = reconnect_url(settings, nid, now)
                if what != "ignore" and url is not None:
                    _person(http, url, complete=what == "complete")
        summary = report.build(web, since="30d", now=utc_now())
    finally:
        web.close()
    return {"people": played, **compact(summary)}


def _person(http: httpx.Client, url: str, *, complete: bool) -> None:
    """What the reconnect page's script does: press, open MX's window, decide, report."""
    pressed = http.post(url, headers={"Accept": "application/json"})
    pressed.raise_for_status()
    answer = pressed.json()
    window = http.get(answer["uri"])
    window.raise_for_status()
    http.post(
        f"{answer['uri'].split('?')[0]}/decide",
        content=f"decision={'authorize' if complete else 'cancel'}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).raise_for_status()
    result = {"status": "success"} if complete else {"status": "error",
                                                     "error_reason": "CANCELLED"}  # fmt: skip
    http.post(f"{url}/report", json={**result, "click": answer["click"]}).raise_for_status()


def compact(data: dict[str, Any]) -> dict[str, Any]:
    """The funnel's stage counts, how episodes ended, and time to reconnect."""
    return {
        "funnel": {r["stage"]: r["count"] for r in data["overall"]["funnel"]},
        "outcomes": data["overall"]["outcomes"],
        "time_to_reconnect": data["overall"]["time_to_reconnect"],
        "alerts": [a["institution"] for a in data["alerts"]],
    }


def describe(summary: dict[str, Any]) -> str:
    """One line for the demo's output."""
    f = summary["funnel"]
    t = summary["time_to_reconnect"]
    p50 = hours(t["p50_hours"])
    return (
        f"funnel: detected {f['detected']} → notified {f['notified']} → clicked {f['clicked']}"
        f" → OAuth result {f['result']} → reconnected {f['confirmed']} (median {p50}); "
        f"abandoned in the window {summary['people']['abandon']} this run. "
        "`reauth report --html funnel.html` draws it."
    )
