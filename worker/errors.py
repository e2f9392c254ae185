"""The one exception tree of the service.

Every error this package raises on purpose is a :class:`ReauthError`. Library errors (httpx,
SQLAlchemy, redis, pydantic) are translated at the boundary that calls the library, with
``raise ... from exc``, so callers never need to import a library to catch what we raise.
No message carries a secret (API key, API or session token, the token part of a URI).

::

    ReauthError
    ├── ConfigError                 bad settings; the CLI prints it and exits 2
    ├── InputError                  bad operator input (import rows, CLI arguments)
    │   └── UnknownMemberError      a member guid that is not in the database
    ├── StorageError                the database could not be reached or refused a statement
    ├── SinkError                   a notification sink failed
    │   ├── SinkTransientError      retry later (timeouts, 5xx, 408, 429, connection errors)
    │   └── SinkPermanentError      never retry (webhook 4xx other than 408/429)
    └── MxError                     anything that went wrong talking to MX
        ├── MxPermanentError        the member's problem; recorded, never retried blindly
        │   ├── NotOAuthCapable     400 "Member cannot use OAuth"
        │   │   └── BlankOAuthUri   200 whose oauth_window_uri is null or blank
        │   ├── MemberNotFound      404: member (or user) gone
        │   ├── MxBadRequest        any other 4xx about the request
        │   └── UnsafeOAuthUri      MX's URI refused (scheme, userinfo, host, characters)
        ├── MxConfigurationError    about the whole client: pause every MX call, alert, spend
        │   │                       no attempt (evidence about our credentials or request shape)
        │   ├── MxUnauthorized      401 from SSO or Platform, for N distinct users in a window
        │   ├── MxForbidden         403 (IP allow-list, feature), for N distinct users
        │   ├── NexusNotEnabled     SSO 404 for N distinct users: Nexus not enabled for the client
        │   └── MxRequestRefused    405/406/415: method, API version or media type refused
        └── MxTransientError        retry with backoff
            ├── RateLimited         429; ``retry_after`` seconds when MX sent Retry-After
            │   └── RateLimitBacklog  our own shared limit has no slot within REAUTH_MX_TIMEOUT
            ├── ServerError         5xx
            ├── MxTimeout           connect/read/write/pool timeouts
            ├── MxConnectionError   refused, reset, DNS
            ├── BadResponse         non-JSON, missing fields, or a body over the size cap
            ├── SessionExpired      Nexus 401/4011 still there after the bounded refreshes
            └── UserRefused         MX refused one user (SSO 401/403, Platform 401/403, Nexus
                │                   403) and fewer than N distinct users failed: that user's
                │                   members back off
                └── UserNotFound    SSO 404 for one user (unknown or disabled user)

A failure becomes an :class:`MxConfigurationError` only on evidence about the client itself:
the request's shape (405/406/415, deterministic for every member), or credential refusals for
``REAUTH_MX_CREDENTIAL_FAILURE_USERS`` distinct users within
``REAUTH_MX_CREDENTIAL_FAILURE_WINDOW`` with no success in between (:mod:`worker.mx.health`).
One user, one member or one odd answer never stops the fleet.
"""

from __future__ import annotations


class ReauthError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigError(ReauthError):
    """Settings are missing or invalid. The message names each variable and the problem."""


class InputError(ReauthError):
    """Operator input is invalid; nothing was changed."""


class UnknownMemberError(InputError):
    """A member guid given on the command line is not in the database."""

    def __init__(self, member_guids: list[str]) -> None:
        self.member_guids = member_guids
        super().__init__(f"unknown member guid(s): {', '.join(member_guids)}")


class StorageError(ReauthError):
    """The database failed (connection lost, statement refused)."""


class SinkError(ReauthError):
    """Delivering a notification failed."""


class SinkTransientError(SinkError):
    """Delivery may succeed later."""


class SinkPermanentError(SinkError):
    """Delivery will never succeed as is; the notification goes dead at once."""


class MxError(ReauthError):
    """Talking to MX failed. ``status`` is the HTTP status when there was a response."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class MxPermanentError(MxError):
    """The request will not succeed by retrying; record it against the member."""


class NotOAuthCapable(MxPermanentError):
    """MX says the member's institution cannot use OAuth (400 "Member cannot use OAuth")."""


class BlankOAuthUri(NotOAuthCapable):
    """MX answered 200 with a null or blank ``oauth_window_uri``: the member cannot use OAuth.

    MX documents the URI as blank for members that do not connect through OAuth, so this is a
    permanent answer about the member, not a malformed body to retry.
    """


class MemberNotFound(MxPermanentError):
    """MX does not know the member (404)."""


class MxBadRequest(MxPermanentError):
    """MX rejected the request (a 4xx other than 401/403/404/405/406/415/429)."""


class UnsafeOAuthUri(MxPermanentError):
    """MX answered a URI we will not hand to a user: not https (without
    REAUTH_ALLOW_INSECURE_URLS), userinfo, an invalid host, whitespace or control characters, or
    a host outside REAUTH_MX_URI_HOSTS. ``reason`` names the rule; the URI itself is never in
    the message (its token is a secret)."""

    def __init__(self, message: str, *, reason: str, status: int | None = 200) -> None:
        self.reason = reason
        super().__init__(message, status=status)


class MxConfigurationError(MxError):
    """A problem of the whole client, not of a member: stop and alert, spend no attempts."""


class MxUnauthorized(MxConfigurationError):
    """401 for N distinct users: API key, client id or environment is wrong."""


class MxForbidden(MxConfigurationError):
    """403 for N distinct users: IP not allow-listed or feature not enabled for this client."""


class NexusNotEnabled(MxConfigurationError):
    """The SSO API answered 404 for N distinct users: Nexus access is not enabled for the client
    id (or the SSO base URL is wrong)."""


class MxRequestRefused(MxConfigurationError):
    """405, 406 or 415: MX refused the request's method, API version (``Accept`` /
    ``Accept-Version``) or media type. Every member's request has the same shape."""


class MxTransientError(MxError):
    """Retry later with backoff."""


class RateLimited(MxTransientError):
    """429. ``retry_after`` is MX's Retry-After in seconds, when it sent one."""

    def __init__(
        self, message: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class RateLimitBacklog(RateLimited):
    """Our own global rate limit has no free slot within REAUTH_MX_TIMEOUT: nothing was sent.
    ``retry_after`` is when the next slot frees up."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=None, retry_after=retry_after)


class ServerError(MxTransientError):
    """MX answered 5xx."""


class MxTimeout(MxTransientError):
    """No answer in time."""


class MxConnectionError(MxTransientError):
    """The connection failed (refused, reset, DNS)."""


class BadResponse(MxTransientError):
    """MX answered something we cannot read: not JSON, fields missing, or too large."""


class SessionExpired(MxTransientError):
    """Nexus still said "session expired" (401 / code 4011) after the bounded number of session
    refreshes, e.g. while many of one user's calls race sessions that MX expires. A 4011 is
    never evidence about our credentials: the member backs off like after any transient error."""


class UserRefused(MxTransientError):
    """MX refused the request for one user (SSO 401/403, Platform 401/403, Nexus 403) while
    fewer than REAUTH_MX_CREDENTIAL_FAILURE_USERS distinct users failed that way: that user's
    members back off; enough distinct users turn it into an :class:`MxConfigurationError`."""

    def __init__(self, message: str, *, status: int | None = None, user: str = "") -> None:
        self.user = user
        super().__init__(message, status=status)


class UserNotFound(UserRefused):
    """The SSO API answered 404 for one user: unknown or disabled user (MX documents the same
    404 for "Nexus not enabled", which only N distinct users can tell apart)."""
