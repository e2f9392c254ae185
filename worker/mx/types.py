"""The values the pipeline exchanges with the MX client: requests, windows and member states.

All are frozen dataclasses with no I/O. ``OAuthRequest`` enforces MX's redirect rule at
construction (``client_redirect_url`` only with ``referral_source=APP``), so a request that would
break a browser OAuth flow cannot even be built. ``OAuthWindow`` never shows its URI in ``repr``:
the token in the URI lets anyone finish the user's OAuth.

Identifiers: ``member_guid`` and ``user_guid`` are MX's guids and the only identifiers of the
message contract, the idempotency keys and Nexus paths. ``user_id`` and ``member_id`` are the
partner's own ids: ``user_id`` is what the SSO API token is read for (Nexus), and with
``REAUTH_MX_PLATFORM_PATH_IDS=partner`` both may stand in for the guids in Platform v20250224
paths, which accept either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from worker.logging import fingerprint_uri
from worker.mx.params import REFERRAL_APP, REFERRAL_SOURCES


@dataclass(frozen=True)
class OAuthRequest:
    """Ask MX for a fresh OAuth window URI for one member.

    Raises:
        ValueError: ``referral_source`` is not BROWSER/APP, or ``client_redirect_url`` is given
            with BROWSER (MX documents it for APP only, and it breaks browser flows).
    """

    member_guid: str
    user_guid: str
    #: Partner-side user id used for the MX SSO token; ``user_guid`` is used when it is None.
    user_id: str | None
    referral_source: str
    skip_aggregation: bool
    client_redirect_url: str | None = None
    ui_message_webview_url_scheme: str | None = None
    #: Partner-side member id; only ever a Platform v20250224 path alias (see module docstring).
    member_id: str | None = None

    def __post_init__(self) -> None:
        if not self.member_guid or not self.user_guid:
            raise ValueError("member_guid and user_guid must not be empty")
        if self.referral_source not in REFERRAL_SOURCES:
            raise ValueError(
                f"referral_source must be BROWSER or APP, got {self.referral_source!r}"
            )
        if self.client_redirect_url is not None and self.referral_source != REFERRAL_APP:
            raise ValueError("client_redirect_url is only allowed with referral_source=APP")

    @property
    def sso_user_id(self) -> str:
        """The user identifier the SSO API token is read for."""
        return self.user_id or self.user_guid


@dataclass(frozen=True)
class OAuthWindow:
    """MX's answer: the member guid it answered with, the one-time URI and when it was made."""

    #: As MX answered; it can differ from the guid asked for.
    member_guid: str
    oauth_window_uri: str = field(repr=False)
    #: Timezone-aware UTC, from the client's injected clock.
    generated_at: datetime

    def __repr__(self) -> str:
        return (
            f"OAuthWindow(member_guid={self.member_guid!r}, "
            f"oauth_window_uri={fingerprint_uri(self.oauth_window_uri)!r}, "
            f"generated_at={self.generated_at.isoformat()!r})"
        )


@dataclass(frozen=True)
class MemberRequest:
    """Read one member's live state from MX (Nexus ``GET /members/{guid}``, Platform
    ``GET /users/{u}/members/{m}/status``)."""

    member_guid: str
    user_guid: str
    #: Partner-side ids, as in :class:`OAuthRequest`.
    user_id: str | None = None
    member_id: str | None = None

    def __post_init__(self) -> None:
        if not self.member_guid or not self.user_guid:
            raise ValueError("member_guid and user_guid must not be empty")

    @property
    def sso_user_id(self) -> str:
        """The user identifier the SSO API token is read for."""
        return self.user_id or self.user_guid


#: The connection status of a member that works again.
CONNECTED = "CONNECTED"


@dataclass(frozen=True)
class MemberState:
    """A member as MX sees it now. ``None`` means MX did not say (the field is absent or null;
    the Platform status endpoint has no ``is_oauth``, Nexus no ``is_authenticated``)."""

    #: As MX answered (the guid asked for when MX left it null).
    member_guid: str
    connection_status: str | None
    is_being_aggregated: bool | None
    #: When the latest aggregation-type job started.
    aggregated_at: datetime | None
    successfully_aggregated_at: datetime | None
    is_oauth: bool | None
    is_authenticated: bool | None
    #: Timezone-aware UTC, from the client's injected clock.
    read_at: datetime

    @property
    def is_connected(self) -> bool:
        """MX reports the member ``CONNECTED``: the person has reconnected, stop reminding."""
        return self.connection_status == CONNECTED
