"""Reconnect links: what ``reauth serve`` does when a person opens or presses a reconnect_url.

* :func:`open_link` (GET): verify the token, read the notification and member. No MX call, so a
  mail scanner fetching the link spends nothing.
* :func:`mint` (POST): check the episode is still open and the per-member click limit, ask MX for
  a fresh URI (always ``referral_source=BROWSER``: a link opened from a message is a browser),
  record the click. The URI is handed over only after the client's link checks passed.
* :func:`report`: an OAuth result reported by the page (postMessage) or an APP redirect. It is
  a claim, not a fact (those URLs are public): it never ends an episode by itself; it triggers a
  confirmation read of the member from MX (see :func:`confirm`).

DB work is synchronous (SQLAlchemy); the web layer runs it in a worker thread. MX calls are
awaited on the web server's event loop, through the runtime's one MX client (sessions and the
global rate limit shared with the workers).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from worker import metrics
from worker.clock import utc_now
from worker.core import tokens
from worker.core.funnel import Event, Stage
from worker.core.policy import IN_EPISODE, State, ended_by_oauth_success
from worker.errors import MxError, ReauthError
from worker.logging import fingerprint_uri
from worker.mx import MemberRequest, OAuthRequest, OAuthWindow
from worker.runtime import Runtime
from worker.service.regenerate import outcome_of
from worker.store import attempts, clicks, decisions, funnel, members
from worker.store.db import session_scope

log = structlog.get_logger(__name__)

REASON_TEXT = {
    "expired": "has expired",
    "revoked": "was turned off by the bank",
    "abandoned": "was not finished",
}


class LinkNotFound(ReauthError):
    """Bad signature, unknown notification: the same answer for both (404)."""


class LinkExpired(ReauthError):
    """A genuine link past REAUTH_RECONNECT_TTL (410)."""


@dataclass(frozen=True)
class Target:
    """The member a confirmation read is about."""

    member_id: int
    member_guid: str
    user_guid: str
    user_id: str | None
    episode: int


@dataclass(frozen=True)
class LinkView:
    """What the reconnect page shows and what a press of Reconnect needs."""

    notification_id: uuid.UUID
    member_id: int
    member_guid: str
    user_guid: str
    user_id: str | None
    institution: str
    reason: str
    episode: int
    skip_aggregation: bool
    #: The episode this link was sent for is still open.
    open: bool
    #: Presses in the last hour that asked MX for a URI (the per-member limit).
    recent_clicks: int = 0

    @property
    def target(self) -> Target:
        return Target(self.member_id, self.member_guid, self.user_guid, self.user_id, self.episode)

    @property
    def why(self) -> str:
        return f"Your connection to {self.institution} {REASON_TEXT.get(self.reason, 'stopped')}."


@dataclass(frozen=True)
class Minted:
    """The outcome of a press of Reconnect: a fresh URI, or why not."""

    outcome: str  # minted | closed | rate_limited | mx_error
    click_id: uuid.UUID | None = None
    uri: str | None = None


def open_link(rt: Runtime, token: str, now: datetime) -> LinkView:
    """The page's data, or :class:`LinkNotFound` / :class:`LinkExpired`. One read, no write."""
    try:
        parsed = tokens.verify(tokens.RECONNECT, token, rt.settings.reconnect_keys, now)
    except tokens.TokenExpired:
        raise LinkExpired("link expired") from None
    except tokens.TokenError:
        raise LinkNotFound("no such link") from None
    row = clicks.link_facts(rt.engine, parsed.id, now - timedelta(hours=1))
    if row is None:
        raise LinkNotFound("no such link")
    payload = row.payload
    episode = int(payload.get("episode", 0))
    return LinkView(
        notification_id=row.notification_id,
        member_id=row.member_id,
        member_guid=row.member_guid,
        user_guid=row.user_guid,
        user_id=row.user_id,
        institution=row.institution_name or row.institution_code,
        reason=str(payload.get("reason", "")),
        episode=episode,
        skip_aggregation=bool((row.link_params or payload).get("skip_aggregation", False)),
        open=State(row.reauth_state) in IN_EPISODE and row.episode == episode,
        recent_clicks=int(row.recent_clicks or 0),
    )


def _record_click(rt: Runtime, view: LinkView, outcome: str, now: datetime) -> uuid.UUID:
    with session_scope(rt.sessions) as s:
        click_id = clicks.add(
            s, member_id=view.member_id, notification_id=view.notification_id,
            episode=view.episode, outcome=outcome, now=now,
        )  # fmt: skip
    metrics.RECONNECT_CLICKS.labels(outcome=outcome).inc()
    return click_id


def allowed_to_mint(rt: Runtime, view: LinkView) -> bool:
    """The per-member click limit (REAUTH_RECONNECT_CLICKS_PER_HOUR), from the page's read."""
    return view.recent_clicks < rt.settings.reconnect_clicks_per_hour


async def ask_mx(rt: Runtime, view: LinkView) -> OAuthWindow:
    """A fresh BROWSER URI for the member (no redirect: MX documents it for APP only)."""
    request = OAuthRequest(
        member_guid=view.member_guid,
        user_guid=view.user_guid,
        user_id=view.user_id,
        referral_source="BROWSER",
        skip_aggregation=view.skip_aggregation,
    )
    return await rt.mx.generate_oauth_window_uri(request)


def record_mint(
    rt: Runtime, view: LinkView, result: OAuthWindow | MxError, now: datetime, latency_ms: float
) -> Minted:
    """Store the click and the MX call's attempt row; returns what to answer."""
    ok = isinstance(result, OAuthWindow)
    with session_scope(rt.sessions) as s:
        click_id = clicks.add(
            s, member_id=view.member_id, notification_id=view.notification_id,
            episode=view.episode, outcome="minted" if ok else "mx_error", now=now,
        )  # fmt: skip
        attempts.add(s, [_attempt(rt, view, result, now, latency_ms)])
        # A press of Reconnect. The 303 to MX that follows cannot tell us the window opened.
        funnel.record(s, [Event(view.member_id, view.episode, Stage.CLICKED, now)])
    metrics.RECONNECT_CLICKS.labels(outcome="minted" if ok else "mx_error").inc()
    if isinstance(result, OAuthWindow):
        log.info(
            "reconnect.minted",
            member_guid=view.member_guid,
            link=fingerprint_uri(result.oauth_window_uri),
        )
        return Minted("minted", click_id, result.oauth_window_uri)
    log.warning("reconnect.mx_error", member_guid=view.member_guid, error=type(result).__name__)
    return Minted("mx_error", click_id)


def _attempt(
    rt: Runtime, view: LinkView, result: OAuthWindow | MxError, now: datetime, latency_ms: float
) -> dict[str, Any]:
    error = result if isinstance(result, MxError) else None
    return {
        "member_id": view.member_id,
        "episode": view.episode,
        "reminder": 0,  # a click, not a reminder
        "trigger": "click",
        "reason": view.reason or None,
        "mx_api": rt.settings.mx_api.value,
        "referral_source": "BROWSER",
        "skip_aggregation": view.skip_aggregation,
        "skip_aggregation_why": "as_notified",
        "redirect_used": False,
        "outcome": outcome_of(error).value,
        "http_status": error.status if error is not None else 200,
        "error_class": type(error).__name__ if error is not None else None,
        "error_message": str(error)[:500] if error is not None else None,
        "latency_ms": latency_ms,
        "task_id": None,
        "created_at": now,
    }


def record_closed(rt: Runtime, view: LinkView, now: datetime, outcome: str) -> None:
    """A press that asked MX for nothing (episode over, or over the click limit)."""
    _record_click(rt, view, outcome, now)


def click_token(rt: Runtime, minted: Minted, now: datetime) -> str | None:
    """A signed token naming the click, valid for REAUTH_CONFIRM_WINDOW: the page sends it with
    the OAuth result, which ties the report to a real press of Reconnect."""
    if minted.click_id is None:
        return None
    return tokens.sign(
        tokens.STATE,
        minted.click_id,
        now + rt.settings.confirm_window,
        rt.settings.reconnect_keys[0],
    )


# --- OAuth results and confirmation --------------------------------------------------------------

#: MX asks for member reads no faster than every 3 seconds.
MIN_READ_INTERVAL_S = 3.0
OAUTH_REPORTS = frozenset({"success", "error"})


@dataclass(frozen=True)
class Report:
    """An OAuth result as the browser or the app reported it: a claim until MX confirms it."""

    status: str
    error_reason: str | None = None
    #: The click it belongs to, when the report carried a valid click token or APP state.
    click_id: uuid.UUID | None = None


def parse_report(status: object, error_reason: object) -> tuple[str, str | None]:
    """Normalise a reported status and error reason (unknown error reasons are kept, capped)."""
    text = str(status or "").strip().lower()
    if text not in OAUTH_REPORTS:
        text = "error"
    reason = str(error_reason).strip().upper()[:32] if error_reason else None
    return text, reason or None


def click_from_token(rt: Runtime, token: object, now: datetime) -> uuid.UUID | None:
    """The click a report's token names, or None when it is missing, forged or expired."""
    if not isinstance(token, str):
        return None
    try:
        return tokens.verify(tokens.STATE, token, rt.settings.reconnect_keys, now).id
    except tokens.TokenError:
        return None


def record_report(rt: Runtime, view: LinkView, report: Report, now: datetime) -> None:
    """Keep the report on its click. Only a report tied to a real click (a valid token) may
    hold reminders back, and only until confirmation or REAUTH_CONFIRM_WINDOW."""
    if report.click_id is None:
        return
    with session_scope(rt.sessions) as s:
        clicks.report(s, report.click_id, status=report.status, error_reason=report.error_reason)
        funnel.record(s, _reported(view.member_id, view.episode, report, now))
        if report.status == "success":
            members.postpone(s, view.member_id, now + rt.settings.confirm_window)


def _reported(member_id: int, episode: int, report: Report, now: datetime) -> list[Event]:
    """A result reported by MX's window (postMessage or APP redirect): the window did open."""
    result = "success" if report.status == "success" else (report.error_reason or "error")
    return [
        Event(member_id, episode, Stage.OPENED, now),
        Event(member_id, episode, Stage.RESULT, now, detail=result),
    ]


class Confirmer:
    """Confirms reported results by reading the member from MX: coalesced per member (one read
    in flight, reads at most every :data:`MIN_READ_INTERVAL_S`), through the runtime's MX
    client and so its global rate limit. One per web process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._inflight: dict[int, asyncio.Task[bool]] = {}
        self._last: dict[int, tuple[float, bool]] = {}

    async def confirm(self, view: Target) -> bool:
        """True when MX says the member is connected again (its episode is then ended)."""
        last = self._last.get(view.member_id)
        if last is not None and time.monotonic() - last[0] < MIN_READ_INTERVAL_S:
            return last[1]
        task = self._inflight.get(view.member_id)
        if task is None:
            task = asyncio.ensure_future(self._read(view))
            self._inflight[view.member_id] = task
            task.add_done_callback(lambda _: self._inflight.pop(view.member_id, None))
        return await asyncio.shield(task)

    async def _read(self, view: Target) -> bool:
        request = MemberRequest(
            member_guid=view.member_guid, user_guid=view.user_guid, user_id=view.user_id
        )
        try:
            state = await self.rt.mx.read_member(request)
        except MxError as exc:
            log.warning("reconnect.confirm_failed", member_guid=view.member_guid,
                        error=type(exc).__name__)  # fmt: skip
            return False
        connected = state.is_connected or bool(state.is_being_aggregated)
        self._last[view.member_id] = (time.monotonic(), connected)
        if connected:
            await asyncio.to_thread(
                end_confirmed, self.rt, view, state.connection_status, utc_now()
            )
        return connected


def end_confirmed(rt: Runtime, view: Target, status: str | None, now: datetime) -> None:
    """MX confirmed the member connected: the episode ends through the one decision writer."""
    with session_scope(rt.sessions) as s:
        found = members.by_guids(s, [view.member_guid], for_update=True).get(view.member_guid)
        if found is None:
            return
        members.set_mx_fields(
            found,
            {"oauth_status": "SUCCESS", "oauth_error_reason": None,
             "connection_status": status or "CONNECTED"},
        )  # fmt: skip
        snap = members.snapshot(found)
        decisions.apply(
            s,
            [decisions.Change(found.id, snap.state, ended_by_oauth_success(snap), confirmed=True)],
            now=now,
        )
        clicks.confirm(s, found.id, view.episode, now)
    log.info("reconnect.confirmed", member_guid=view.member_guid, episode=view.episode)


def app_return(
    rt: Runtime,
    state: str | None,
    member_guid: str | None,
    *,
    report: Report,
    now: datetime,
) -> Target | None:
    """Record an APP flow's result; returns whom to confirm (None: nobody we know).

    A valid single-use ``state`` names the notification whose link MX redirected from: the
    result is kept as an APP click of it and may hold reminders back. Without one, the
    reported member guid (public, so a claim) only gets a confirmation read.
    """
    nid = None
    if state:
        try:
            nid = tokens.verify(tokens.STATE, state, rt.settings.reconnect_keys, now).id
        except tokens.TokenError:
            nid = None
    with session_scope(rt.sessions) as s:
        if nid is not None:
            found = clicks.link_target(s, nid)
            if found is not None and clicks.first_app_return(s, nid):
                note, m = found
                episode = int(note.payload.get("episode", 0))
                click_id = clicks.add(
                    s, member_id=m.id, notification_id=nid, episode=episode,
                    outcome="app_return", now=now, referral_source="APP",
                )  # fmt: skip
                clicks.report(s, click_id, status=report.status, error_reason=report.error_reason)
                clicks.use_state(s, click_id, now)
                # The APP link leads to MX directly: its return is the first we hear of it.
                funnel.record(
                    s,
                    [
                        Event(m.id, episode, Stage.CLICKED, now),
                        *_reported(m.id, episode, report, now),
                    ],
                )
                if report.status == "success":
                    members.postpone(s, m.id, now + rt.settings.confirm_window)
                return Target(m.id, m.member_guid, m.user_guid, m.user_id, episode)
        if not member_guid:
            return None
        named = members.by_guids(s, [member_guid[:64]]).get(member_guid[:64])
        if named is None or State(named.reauth_state) not in IN_EPISODE:
            return None
        return Target(named.id, named.member_guid, named.user_guid, named.user_id, named.episode)
