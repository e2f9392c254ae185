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

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from worker.core import tokens
from worker.core.policy import IN_EPISODE, State
from worker.errors import MxError, ReauthError
from worker.logging import fingerprint_uri
from worker.mx import OAuthRequest, OAuthWindow
from worker.runtime import Runtime
from worker.service.regenerate import outcome_of
from worker.store import attempts, clicks
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
    """The page's data, or :class:`LinkNotFound` / :class:`LinkExpired`. Reads only."""
    try:
        parsed = tokens.verify(tokens.RECONNECT, token, rt.settings.reconnect_keys, now)
    except tokens.TokenExpired:
        raise LinkExpired("link expired") from None
    except tokens.TokenError:
        raise LinkNotFound("no such link") from None
    with session_scope(rt.sessions) as s:
        found = clicks.link_target(s, parsed.id)
        if found is None:
            raise LinkNotFound("no such link")
        note, m = found
        payload = note.payload
        episode = int(payload.get("episode", 0))
        return LinkView(
            notification_id=note.id,
            member_id=m.id,
            member_guid=m.member_guid,
            user_guid=m.user_guid,
            user_id=m.user_id,
            institution=m.institution_name or m.institution_code,
            reason=str(payload.get("reason", "")),
            episode=episode,
            skip_aggregation=bool((note.link_params or payload).get("skip_aggregation", False)),
            open=State(m.reauth_state) in IN_EPISODE and m.episode == episode,
        )


def _record_click(rt: Runtime, view: LinkView, outcome: str, now: datetime) -> uuid.UUID:
    with session_scope(rt.sessions) as s:
        click_id = clicks.add(
            s, member_id=view.member_id, notification_id=view.notification_id,
            episode=view.episode, outcome=outcome, now=now,
        )  # fmt: skip
    return click_id


def allowed_to_mint(rt: Runtime, view: LinkView, now: datetime) -> bool:
    """The per-member click limit (REAUTH_RECONNECT_CLICKS_PER_HOUR)."""
    with session_scope(rt.sessions) as s:
        used = clicks.count_since(s, view.member_id, now - timedelta(hours=1))
    return used < rt.settings.reconnect_clicks_per_hour


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
