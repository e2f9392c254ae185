"""The sandbox as MX's webhook sender: MX-shaped events, Basic auth, retries like MX.

When a member's live state changes (``PUT /_sandbox/members/{guid}``, or Authorize in its OAuth
window) the sandbox posts a MEMBER ``updated`` event, and a CONNECTION_STATUS ``CHANGED`` event
when the new status is one of the eight MX fires it for, to ``webhook_url`` with HTTP Basic
credentials. A failed delivery (no answer, or anything but 2xx) is retried after each of
``webhook_retry_delays`` (MX thins its retries out over about a day; the sandbox's are short).

On demand, for tests and the demo: :meth:`WebhookSender.hold` collects events instead of
sending them and :meth:`WebhookSender.release` sends them (``reverse=True``: newest first, out
of order); ``duplicates`` sends every event that many extra times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

#: The statuses MX fires CONNECTION_STATUS for (end-user-actionable).
CONNECTION_STATUS_EVENTS = frozenset(
    {"CHALLENGED", "DENIED", "EXPIRED", "IMPAIRED", "IMPEDED", "LOCKED", "PREVENTED", "REJECTED"}
)
_STATUS_IDS = {
    "CREATED": 0, "PREVENTED": 1, "DENIED": 2, "CHALLENGED": 3, "REJECTED": 4, "LOCKED": 5,
    "CONNECTED": 6, "IMPEDED": 7, "RECONNECTED": 8, "DEGRADED": 9, "DISCONNECTED": 10,
    "DISCONTINUED": 11, "CLOSED": 12, "DELAYED": 13, "FAILED": 14, "UPDATED": 15,
    "DISABLED": 16, "IMPORTED": 17, "RESUMED": 18, "EXPIRED": 19, "IMPAIRED": 20, "PENDING": 21,
}  # fmt: skip


def events_for(
    guid: str, user_guid: str, state: dict[str, Any], *, is_oauth: bool = True
) -> list[dict[str, Any]]:
    """The events MX would send for a member whose live state is now ``state``."""
    status = state.get("connection_status")
    events: list[dict[str, Any]] = []
    if status in CONNECTION_STATUS_EVENTS:
        events.append({
            "action": "CHANGED", "connection_status": status,
            "connection_status_id": _STATUS_IDS.get(str(status)),
            "connection_status_message": f"sandbox: {status}", "member_guid": guid,
            "type": "CONNECTION_STATUS", "user_guid": user_guid,
        })  # fmt: skip
    events.append({
        "action": "updated", "aggregated_at": state.get("aggregated_at"),
        "connection_status": status, "connection_status_id": _STATUS_IDS.get(str(status)),
        "guid": guid, "id": None, "institution_code": "mxbank",
        "is_being_aggregated": bool(state.get("is_being_aggregated")), "is_oauth": is_oauth,
        "successfully_aggregated_at": state.get("successfully_aggregated_at"),
        "type": "MEMBER", "user_guid": user_guid, "user_id": None,
    })  # fmt: skip
    return events


@dataclass
class WebhookSender:
    """Posts events on a background thread, one at a time, retrying failures."""

    url: Callable[[], str | None]
    auth: Callable[[], tuple[str, str]]
    delays: Callable[[], list[float]]
    #: Extra copies of every event.
    duplicates: Callable[[], int] = lambda: 0
    #: Every delivery attempt: (event type, HTTP status or 0 for no answer).
    attempts: list[tuple[str, int]] = field(default_factory=list)
    _held: list[dict[str, Any]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def send(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            if self._held is not None:
                self._held.extend(events)
                return
        self._start(events)

    def hold(self) -> None:
        """Collect events instead of sending them (until :meth:`release`)."""
        with self._lock:
            self._held = []

    def release(self, *, reverse: bool = False) -> int:
        """Send what was held (``reverse``: newest first); returns how many events."""
        with self._lock:
            held, self._held = self._held or [], None
        self._start(list(reversed(held)) if reverse else held)
        return len(held)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for deliveries in flight (tests)."""
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def _start(self, events: list[dict[str, Any]]) -> None:
        if not events or not self.url():
            return
        batch = [e for e in events for _ in range(1 + self.duplicates())]
        thread = threading.Thread(target=self._deliver, args=(batch,), daemon=True,
                                  name="sandbox-webhooks")  # fmt: skip
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=10) as client:
            for event in events:
                self._post(client, event)

    def _post(self, client: httpx.Client, event: dict[str, Any]) -> None:
        for delay in [0.0, *self.delays()]:
            time.sleep(delay)
            url = self.url()
            if not url:
                return
            try:
                status = client.post(url, json=event, auth=self.auth()).status_code
            except httpx.HTTPError:
                status = 0
            self.attempts.append((str(event.get("type")), status))
            if 200 <= status < 300:
                return
