"""The MX wire names shared by every API version, and the Nexus/SSO contract.

What differs between API versions (Platform media types, ``Accept-Version``, paths, which query
parameters go out, how answers are read) lives in one module per version under
:mod:`worker.mx.api`; this module holds the names they share, the SSO API and Nexus constants
(also used by the sandbox and the benchmark's baselines).

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

import re
from typing import Final
from urllib.parse import quote

#: Accept / Content-Type of every Nexus call.
NEXUS_MEDIA_TYPE: Final = "application/vnd.mx.nexus.v1+json"
#: Accept of the SSO API token read (the ``.json`` twin of the documented ``+xml``).
SSO_MEDIA_TYPE: Final = "application/vnd.moneydesktop.sso.v3+json"
HEADER_API_KEY: Final = "MD-API-KEY"
HEADER_API_TOKEN: Final = "MD-API-TOKEN"  # noqa: S105 (a header name, not a secret)
HEADER_SESSION_TOKEN: Final = "MD-SESSION-TOKEN"  # noqa: S105 (a header name)
#: Platform API version header, required by MX since 2026-08-12.
HEADER_ACCEPT_VERSION: Final = "Accept-Version"

#: Nexus error code for "session expired".
SESSION_EXPIRED_CODE: Final = 4011
#: The documented message of the 400 for a member whose institution has no OAuth.
NOT_OAUTH_MESSAGE: Final = "Member cannot use OAuth"

REFERRAL_BROWSER: Final = "BROWSER"
REFERRAL_APP: Final = "APP"
REFERRAL_SOURCES: Final = frozenset({REFERRAL_BROWSER, REFERRAL_APP})

#: Query parameter names (identical on Nexus and both Platform versions).
Q_REFERRAL_SOURCE: Final = "referral_source"
Q_SKIP_AGGREGATION: Final = "skip_aggregation"
Q_CLIENT_REDIRECT_URL: Final = "client_redirect_url"
Q_UI_MESSAGE_SCHEME: Final = "ui_message_webview_url_scheme"
#: Platform only (both versions): ``false`` keeps the user out of the bank's app (MX: Chase).
Q_ENABLE_APP2APP: Final = "enable_app2app"


def sso_token_path(client_id: str, user_id: str) -> str:
    """Path (under the SSO base URL) of the one-time API token for ``user_id``."""
    return f"/{seg(client_id)}/users/{seg(user_id)}/api_token.json"


def nexus_oauth_path(member_guid: str) -> str:
    return f"/members/{seg(member_guid)}/oauth_window_uri"


def nexus_member_path(member_guid: str) -> str:
    return f"/members/{seg(member_guid)}"


def seg(value: str) -> str:
    """One URL path segment."""
    # Ids come from our database and MX; quoting keeps a stray "/" or "?" from changing the URL.
    # GUIDs are unreserved characters only, which quote() returns unchanged: skip its work.
    if _UNRESERVED.fullmatch(value):
        return value
    return quote(value, safe="")


#: Characters quote() never changes (RFC 3986 unreserved); at least one.
_UNRESERVED: Final = re.compile(r"[A-Za-z0-9_.~-]+")


NEXUS_SESSIONS_PATH: Final = "/sessions"
