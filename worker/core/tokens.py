"""Signed, opaque tokens for links people click: ``reconnect_url`` and the APP flow's ``state``.

A token carries a 16-byte id (a notification's or a click's, never a member guid or anything
personal) and an expiry, signed with HMAC-SHA256 under a purpose label, base64url without
padding: 54 characters. Several keys verify (the first signs), so keys rotate without breaking
links already sent. Pure: keys and ``now`` are passed in.

A bad signature and an unknown id must look the same to the outside (both 404); an expired
token is told apart (410) only after its signature checked out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

#: What a token is for: a reconnect link cannot be replayed as an APP ``state`` or vice versa.
RECONNECT = b"reauth.reconnect.v1"
STATE = b"reauth.state.v1"
_MAC_BYTES = 16
_BODY = struct.Struct(">16sQ")  # id, expiry (Unix seconds)


class TokenError(Exception):
    """The token is not one of ours (malformed or bad signature)."""


class TokenExpired(TokenError):
    """A genuine token past its expiry."""


@dataclass(frozen=True)
class Token:
    id: uuid.UUID
    expires_at: datetime


def _mac(key: bytes, purpose: bytes, body: bytes) -> bytes:
    return hmac.new(key, purpose + body, hashlib.sha256).digest()[:_MAC_BYTES]


def sign(purpose: bytes, token_id: uuid.UUID, expires_at: datetime, key: bytes) -> str:
    body = _BODY.pack(token_id.bytes, int(expires_at.timestamp()))
    raw = body + _mac(key, purpose, body)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify(purpose: bytes, token: str, keys: Sequence[bytes], now: datetime) -> Token:
    """The token's id and expiry; :class:`TokenError` or :class:`TokenExpired` otherwise."""
    if not keys:
        raise TokenError("no keys configured")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise TokenError("malformed") from None
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(raw) != _BODY.size + _MAC_BYTES or canonical != token:
        # Non-canonical spellings (spare bits set in the last character) are refused too, so
        # exactly one string is valid for each token.
        raise TokenError("malformed")
    body, mac = raw[: _BODY.size], raw[_BODY.size :]
    # Every key is tried, so the time taken does not tell which key (if any) matched.
    matched = [hmac.compare_digest(mac, _mac(key, purpose, body)) for key in keys]
    if not any(matched):
        raise TokenError("bad signature")
    id_bytes, expiry = _BODY.unpack(body)
    parsed = Token(uuid.UUID(bytes=id_bytes), datetime.fromtimestamp(expiry, tz=UTC))
    if parsed.expires_at <= now:
        raise TokenExpired("expired")
    return parsed
