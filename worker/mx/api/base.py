"""The seam between the MX client and one API version: what a version module provides.

A *dialect* turns a request into a :class:`Call` (method, URL, headers, query; no credentials)
and reads the answers (a window, a member state) out of a decoded JSON object. The client owns
everything around that (credentials, sessions, rate limit, error mapping, URI checks), so a new
MX API version is one module implementing :class:`Dialect`, registered in
:func:`worker.mx.api.dialect_for`.

The reading helpers here are pure and shared: MX's member objects have the same field names in
every version documented so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from worker.errors import BadResponse
from worker.mx.types import MemberRequest, MemberState, OAuthRequest


class Auth(StrEnum):
    """How a dialect's calls are authorised."""

    #: ``MD-SESSION-TOKEN`` from the SSO API + ``POST /sessions`` flow, per user (Nexus).
    SESSION = "session"
    #: HTTP Basic ``client_id:api_key`` (Platform).
    BASIC = "basic"


@dataclass(frozen=True)
class Call:
    """One HTTP request to MX, without credentials. ``what`` names it in errors and logs (no
    secrets: ids only)."""

    method: str
    url: str
    headers: Mapping[str, str]
    what: str
    params: Mapping[str, str] | None = field(default=None)


@dataclass(frozen=True)
class WindowFields:
    """What an OAuth window answer said: the guid (None when MX left it null) and the URI
    (None when null; may be blank)."""

    member_guid: str | None
    oauth_window_uri: str | None


class Dialect(Protocol):
    """One MX API version."""

    #: e.g. ``nexus``, ``platform v20250224`` (logs and error messages).
    name: str
    auth: Auth
    #: Scope of credential refusals in :mod:`worker.mx.health`.
    health_scope: str

    def oauth_window(self, request: OAuthRequest) -> Call: ...

    def read_member(self, request: MemberRequest) -> Call: ...

    def user_key(self, user_guid: str, user_id: str | None) -> str:
        """Who a call is about: the SSO user of a Nexus session, the user in a Platform path.
        Sessions are cached and refusals counted per this key."""
        ...

    def window_fields(self, doc: Mapping[str, Any], *, what: str, status: int) -> WindowFields:
        """Raises :class:`BadResponse` when the answer has no usable shape."""
        ...

    def member_state(
        self,
        doc: Mapping[str, Any],
        *,
        asked: str,
        read_at: datetime,
        what: str,
        status: int,
    ) -> MemberState:
        """Raises :class:`BadResponse` when the answer has no usable shape."""
        ...


# --- shared reading helpers --------------------------------------------------------------------


def member_object(doc: Mapping[str, Any], *, what: str, status: int) -> Mapping[str, Any]:
    """``doc["member"]`` as an object, or :class:`BadResponse`."""
    member = doc.get("member")
    if not isinstance(member, dict):
        raise BadResponse(f"{what}: answer has no member object", status=status)
    return member


def optional_str(obj: Mapping[str, Any], key: str, *, what: str, status: int) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadResponse(f"{what}: member.{key} is not a string", status=status)


def optional_bool(obj: Mapping[str, Any], key: str, *, what: str, status: int) -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadResponse(f"{what}: member.{key} is not a boolean", status=status)


def optional_time(obj: Mapping[str, Any], key: str, *, what: str, status: int) -> datetime | None:
    """An ISO 8601 timestamp (MX writes ``2016-10-13T18:07:57.000Z``), as aware UTC."""
    text = optional_str(obj, key, what=what, status=status)
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadResponse(f"{what}: member.{key} is not an ISO 8601 time", status=status) from None
    if when.tzinfo is None:
        # MX's examples always carry "Z"; a zone-less time is read as UTC rather than local.
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def read_window(doc: Mapping[str, Any], *, what: str, status: int) -> WindowFields:
    """``{"member": {"guid", "oauth_window_uri"}}`` (Nexus and both Platform versions).

    A null or blank URI is MX's answer for a member that cannot use OAuth; an answer without
    the field at all is not an answer we understand (:class:`BadResponse`, retried).
    """
    member = member_object(doc, what=what, status=status)
    if "oauth_window_uri" not in member:
        raise BadResponse(f"{what}: answer has no member.oauth_window_uri", status=status)
    return WindowFields(
        member_guid=optional_str(member, "guid", what=what, status=status) or None,
        oauth_window_uri=optional_str(member, "oauth_window_uri", what=what, status=status),
    )


def read_member_state(
    doc: Mapping[str, Any], *, asked: str, read_at: datetime, what: str, status: int
) -> MemberState:
    """A member object (Nexus member, Platform member status): the fields both share."""
    m = member_object(doc, what=what, status=status)
    connection = optional_str(m, "connection_status", what=what, status=status)
    return MemberState(
        member_guid=optional_str(m, "guid", what=what, status=status) or asked,
        # Unknown names are kept as MX wrote them (MX may add statuses); the policy decides.
        connection_status=connection.strip().upper() if connection else None,
        is_being_aggregated=optional_bool(m, "is_being_aggregated", what=what, status=status),
        aggregated_at=optional_time(m, "aggregated_at", what=what, status=status),
        successfully_aggregated_at=optional_time(
            m, "successfully_aggregated_at", what=what, status=status
        ),
        is_oauth=optional_bool(m, "is_oauth", what=what, status=status),
        is_authenticated=optional_bool(m, "is_authenticated", what=what, status=status),
        read_at=read_at,
    )


def skip_aggregation_value(skip: bool) -> str:
    """``skip_aggregation`` as query text (Nexus documents a string, Platform a boolean: in a
    query string both are these bytes)."""
    return "true" if skip else "false"


class StandardBodies:
    """The response reading every dialect so far shares: ``{"member": {...}}`` bodies for both
    the OAuth window and the member's state. A version that answers otherwise overrides it."""

    def window_fields(self, doc: Mapping[str, Any], *, what: str, status: int) -> WindowFields:
        return read_window(doc, what=what, status=status)

    def member_state(
        self, doc: Mapping[str, Any], *, asked: str, read_at: datetime, what: str, status: int
    ) -> MemberState:
        return read_member_state(doc, asked=asked, read_at=read_at, what=what, status=status)
