"""What the Platform API versions documented so far share: Basic auth, the same paths under the
user, the same query parameters and answers. A version module supplies its media type, its
``Accept-Version`` value and whether partner ids may stand in for guids in paths.

* OAuth window: ``GET /users/{user}/members/{member}/oauth_window_uri`` with ``referral_source``,
  ``skip_aggregation``, and, with APP only, ``client_redirect_url``,
  ``ui_message_webview_url_scheme`` and ``enable_app2app`` (when REAUTH_APP2APP is set; MX
  defaults to true and documents the switch for APP flows).
* Member: ``GET /users/{user}/members/{member}/status``.
"""

from __future__ import annotations

from worker.mx import params as P
from worker.mx.api.base import (
    Auth,
    Call,
    StandardBodies,
    skip_aggregation_value,
)
from worker.mx.health import SCOPE_PLATFORM
from worker.mx.types import MemberRequest, OAuthRequest


class PlatformDialect(StandardBodies):
    """One Platform API version. Subclasses (one module each) set the class attributes."""

    #: ``Accept-Version`` value.
    version: str = ""
    #: ``Accept`` value.
    media_type: str = ""
    #: Whether MX accepts the partner's own ids in paths (v20250224: "id or guid").
    takes_partner_ids: bool = False
    auth = Auth.BASIC
    health_scope = SCOPE_PLATFORM

    def __init__(
        self, *, base_url: str, app2app: bool | None = None, partner_ids: bool = False
    ) -> None:
        if partner_ids and not self.takes_partner_ids:
            raise ValueError(f"Platform {self.version} paths take MX guids only")
        self._base = base_url
        self._app2app = app2app
        self._partner_ids = partner_ids
        self.name = f"platform {self.version}"
        self._headers = {"Accept": self.media_type, P.HEADER_ACCEPT_VERSION: self.version}

    def user_key(self, user_guid: str, user_id: str | None) -> str:
        return (user_id or user_guid) if self._partner_ids else user_guid

    def _path(self, user_guid: str, user_id: str | None, guid: str, member_id: str | None) -> str:
        # Only the path changes with partner ids: messages, keys and logs keep the MX guids.
        member = (member_id or guid) if self._partner_ids else guid
        return f"/users/{P.seg(self.user_key(user_guid, user_id))}/members/{P.seg(member)}"

    def oauth_window(self, request: OAuthRequest) -> Call:
        params = {
            P.Q_REFERRAL_SOURCE: request.referral_source,
            P.Q_SKIP_AGGREGATION: skip_aggregation_value(request.skip_aggregation),
        }
        if request.referral_source == P.REFERRAL_APP:
            if request.client_redirect_url is not None:
                params[P.Q_CLIENT_REDIRECT_URL] = request.client_redirect_url
            if request.ui_message_webview_url_scheme is not None:
                params[P.Q_UI_MESSAGE_SCHEME] = request.ui_message_webview_url_scheme
            if self._app2app is not None:
                params[P.Q_ENABLE_APP2APP] = "true" if self._app2app else "false"
        path = self._path(
            request.user_guid, request.user_id, request.member_guid, request.member_id
        )
        return Call(
            "GET",
            f"{self._base}{path}/oauth_window_uri",
            self._headers,
            f"Platform {self.version} oauth_window_uri {request.member_guid}",
            params,
        )

    def read_member(self, request: MemberRequest) -> Call:
        path = self._path(
            request.user_guid, request.user_id, request.member_guid, request.member_id
        )
        return Call(
            "GET",
            f"{self._base}{path}/status",
            self._headers,
            f"Platform {self.version} member status {request.member_guid}",
        )
