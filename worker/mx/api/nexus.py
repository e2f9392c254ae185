"""Nexus API (``https://int-data.moneydesktop.com``): calls under a per-user session.

* OAuth window: ``GET /members/{member_guid}/oauth_window_uri`` with ``referral_source``,
  ``skip_aggregation``, ``client_redirect_url`` (APP only) and ``ui_message_webview_url_scheme``
  (Nexus's own example URI carries it with BROWSER). No ``enable_app2app``: Nexus does not list
  it.
* Member: ``GET /members/{member_guid}``.
* Every call: ``Accept`` and ``Content-Type: application/vnd.mx.nexus.v1+json`` and
  ``MD-SESSION-TOKEN``; the session comes from :class:`SessionFlow` (SSO API token, then
  ``POST /sessions``). Paths always take MX guids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.mx import params as P
from worker.mx.api.base import (
    Auth,
    Call,
    StandardBodies,
    skip_aggregation_value,
)
from worker.mx.health import SCOPE_NEXUS
from worker.mx.responses import is_session_expired
from worker.mx.types import MemberRequest, OAuthRequest

_HEADERS = {"Accept": P.NEXUS_MEDIA_TYPE, "Content-Type": P.NEXUS_MEDIA_TYPE}


@dataclass(frozen=True)
class SessionFlow:
    """The two calls that make a Nexus session for one user, and how to read them."""

    base_url: str
    sso_base_url: str
    client_id: str

    def api_token(self, user: str) -> Call:
        """SSO API ``GET /{client_id}/users/{user}/api_token.json`` (``MD-API-KEY`` added by
        the client): a one-time token, valid 10 minutes."""
        return Call(
            "GET",
            self.sso_base_url + P.sso_token_path(self.client_id, user),
            {"Accept": P.SSO_MEDIA_TYPE},
            "SSO api_token",
        )

    def session(self) -> Call:
        """``POST /sessions`` (``MD-API-TOKEN`` added by the client)."""
        return Call("POST", self.base_url + P.NEXUS_SESSIONS_PATH, _HEADERS, "Nexus POST /sessions")

    @staticmethod
    def is_session_expired(status: int, doc: Any) -> bool:
        """Nexus says the session is gone: HTTP 401, or the 4011 code with any status."""
        return is_session_expired(status, doc)


class NexusDialect(StandardBodies):
    name = "nexus"
    auth = Auth.SESSION
    health_scope = SCOPE_NEXUS

    def __init__(self, *, base_url: str, sso_base_url: str, client_id: str) -> None:
        self._base = base_url
        self.sessions = SessionFlow(base_url, sso_base_url, client_id)

    def user_key(self, user_guid: str, user_id: str | None) -> str:
        # Nexus paths carry no user; the session is the SSO user's.
        return user_id or user_guid

    def oauth_window(self, request: OAuthRequest) -> Call:
        params = {
            P.Q_REFERRAL_SOURCE: request.referral_source,
            P.Q_SKIP_AGGREGATION: skip_aggregation_value(request.skip_aggregation),
        }
        if request.client_redirect_url is not None and request.referral_source == P.REFERRAL_APP:
            params[P.Q_CLIENT_REDIRECT_URL] = request.client_redirect_url
        if request.ui_message_webview_url_scheme is not None:
            params[P.Q_UI_MESSAGE_SCHEME] = request.ui_message_webview_url_scheme
        return Call(
            "GET",
            self._base + P.nexus_oauth_path(request.member_guid),
            _HEADERS,
            f"Nexus oauth_window_uri {request.member_guid}",
            params,
        )

    def read_member(self, request: MemberRequest) -> Call:
        return Call(
            "GET",
            self._base + P.nexus_member_path(request.member_guid),
            _HEADERS,
            f"Nexus member {request.member_guid}",
        )
