"""The MX wire contract in one place: media types, header names, paths and query parameters.

Where MX's documentation is unconfirmed (see ``shared/mx-api.md``) the choice made here follows
the research notes' recommendation, so a correction found against the integration environment is
a one-line change in this module:

* the Nexus query parameter is ``referral_source`` (the reference table's name), not the
  ``oauth_referral_source`` used only in the prose of ``client_redirect_url``;
* ``skip_aggregation`` is sent as the text ``true``/``false`` on both APIs (Nexus documents a
  string, Platform a boolean; in a query string both are the same bytes);
* the session token is read at ``session.token`` and the API token at ``api_token.token``;
* an expired Nexus session is HTTP 401 and/or error code ``4011`` anywhere in the error body.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

#: Accept / Content-Type of every Nexus call.
NEXUS_MEDIA_TYPE: Final = "application/vnd.mx.nexus.v1+json"
#: Accept of the SSO API token read (the ``.json`` twin of the documented ``+xml``).
SSO_MEDIA_TYPE: Final = "application/vnd.moneydesktop.sso.v3+json"
#: Accept of the Platform API v20111101.
PLATFORM_MEDIA_TYPE: Final = "application/vnd.mx.api.v1+json"

HEADER_API_KEY: Final = "MD-API-KEY"
HEADER_API_TOKEN: Final = "MD-API-TOKEN"  # noqa: S105 (a header name, not a secret)
HEADER_SESSION_TOKEN: Final = "MD-SESSION-TOKEN"  # noqa: S105 (a header name)

#: Nexus error code for "session expired".
SESSION_EXPIRED_CODE: Final = 4011
#: The documented message of the 400 for a member whose institution has no OAuth.
NOT_OAUTH_MESSAGE: Final = "Member cannot use OAuth"

REFERRAL_BROWSER: Final = "BROWSER"
REFERRAL_APP: Final = "APP"
REFERRAL_SOURCES: Final = frozenset({REFERRAL_BROWSER, REFERRAL_APP})

#: Query parameter names (identical on Nexus and Platform v20111101).
Q_REFERRAL_SOURCE: Final = "referral_source"
Q_SKIP_AGGREGATION: Final = "skip_aggregation"
Q_CLIENT_REDIRECT_URL: Final = "client_redirect_url"
Q_UI_MESSAGE_SCHEME: Final = "ui_message_webview_url_scheme"


def sso_token_path(client_id: str, user_id: str) -> str:
    """Path (under the SSO base URL) of the one-time API token for ``user_id``."""
    return f"/{_seg(client_id)}/users/{_seg(user_id)}/api_token.json"


def nexus_oauth_path(member_guid: str) -> str:
    return f"/members/{_seg(member_guid)}/oauth_window_uri"


def platform_oauth_path(user_guid: str, member_guid: str) -> str:
    return f"/users/{_seg(user_guid)}/members/{_seg(member_guid)}/oauth_window_uri"


def _seg(value: str) -> str:
    # Ids come from our database and MX; quoting keeps a stray "/" or "?" from changing the URL.
    return quote(value, safe="")


NEXUS_SESSIONS_PATH: Final = "/sessions"
