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
        │   ├── MemberNotFound      404: member (or user) gone
        │   └── MxBadRequest        any other 4xx about the request
        ├── MxConfigurationError    401/403 after a session refresh: our credentials or IP
        │   ├── MxUnauthorized      401
        │   └── MxForbidden         403
        └── MxTransientError        retry with backoff
            ├── RateLimited         429; ``retry_after`` seconds when MX sent Retry-After
            ├── ServerError         5xx
            ├── MxTimeout           connect/read/write/pool timeouts
            ├── MxConnectionError   refused, reset, DNS
            └── BadResponse         non-JSON, missing fields, or a body over the size cap
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


class MemberNotFound(MxPermanentError):
    """MX does not know the member (404)."""


class MxBadRequest(MxPermanentError):
    """MX rejected the request (a 4xx other than 401/403/404/429)."""


class MxConfigurationError(MxError):
    """MX refused our credentials even after a fresh session: stop and alert, spend no attempts."""


class MxUnauthorized(MxConfigurationError):
    """401 after a session refresh: API key, client id or environment is wrong."""


class MxForbidden(MxConfigurationError):
    """403: IP not allow-listed or feature not enabled for this client."""


class MxTransientError(MxError):
    """Retry later with backoff."""


class RateLimited(MxTransientError):
    """429. ``retry_after`` is MX's Retry-After in seconds, when it sent one."""

    def __init__(
        self, message: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class ServerError(MxTransientError):
    """MX answered 5xx."""


class MxTimeout(MxTransientError):
    """No answer in time."""


class MxConnectionError(MxTransientError):
    """The connection failed (refused, reset, DNS)."""


class BadResponse(MxTransientError):
    """MX answered something we cannot read: not JSON, fields missing, or too large."""
