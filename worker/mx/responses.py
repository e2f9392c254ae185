"""Turn an MX HTTP response into data or into exactly one error of the tree.

Everything here is pure except :func:`read_capped`, which streams at most ``limit + 1`` bytes of
a body (so a 10 MB answer costs 64 KiB of memory, not 10 MB). The mapping is a total function of
(status, body): :func:`error_for` never raises, and every non-2xx status maps to exactly one
:class:`worker.errors.MxError` subclass.

MX does not document its error envelope, so :func:`error_message` and :func:`error_code` look
for the message and code wherever they are likely to be: at the top level, under ``error`` (a
string or an object), or under ``message``. MX asks callers to branch on the HTTP status, not on
codes; the two exceptions are the documented "Member cannot use OAuth" text and the session
expiry code 4011, which is handled by the caller (the Nexus backend) before this mapping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import orjson

from worker.core import retry_after
from worker.errors import (
    BadResponse,
    MemberNotFound,
    MxBadRequest,
    MxError,
    MxForbidden,
    MxRequestRefused,
    MxTimeout,
    MxUnauthorized,
    NotOAuthCapable,
    RateLimited,
    ServerError,
)
from worker.mx.params import NOT_OAUTH_MESSAGE, SESSION_EXPIRED_CODE

#: Longest Retry-After we pass on, in seconds; anything longer is treated as this (a day).
MAX_RETRY_AFTER = 86_400.0


class BodyTooLarge(Exception):
    """Internal signal: the body is longer than the cap. Becomes :class:`BadResponse`."""


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Read the raw body, refusing to hold more than ``limit`` bytes.

    Raises:
        BodyTooLarge: Content-Length or the streamed bytes exceed ``limit``.
        httpx.HTTPError: the transport failed while streaming (translated by the caller).
    """
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    try:
        # Already in memory (an injected transport built the response from bytes).
        preloaded = response.content
    except httpx.ResponseNotRead:
        pass
    else:
        if len(preloaded) > limit:
            raise BodyTooLarge
        return preloaded
    direct = getattr(response.stream, "read_capped", None)
    if direct is not None:  # the production transport's stream (worker.mx.transport)
        body: bytes | None = await direct(limit)
        if body is None:
            raise BodyTooLarge
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """JSON or ``None`` when the body is not JSON (an HTML error page, truncated text...).

    orjson first (several times faster on the hot path's small answers); what it refuses goes
    to the standard parser, so the result is the standard library's for every body (it also
    reads NaN, big integers and a BOM, which orjson rejects).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and UnicodeDecodeError; absurd nesting raises
        # RecursionError, which must not escape either.
        return None


def _walk(doc: Any, depth: int = 0) -> list[dict[str, Any]]:
    """The document and the objects nested under ``error``/``errors`` (the envelopes seen)."""
    if depth > 3 or not isinstance(doc, dict):
        return []
    found = [doc]
    for key in ("error", "errors"):
        inner = doc.get(key)
        if isinstance(inner, list):
            inner = inner[0] if inner else None
        found.extend(_walk(inner, depth + 1))
    return found


def error_messages(doc: Any) -> list[str]:
    """Every candidate error message in the body, outermost first."""
    if isinstance(doc, str):
        return [doc] if doc else []
    found: list[str] = []
    for obj in _walk(doc):
        for key in ("message", "error", "error_message", "detail"):
            value = obj.get(key)
            if isinstance(value, str) and value:
                found.append(value)
    return found


def error_message(doc: Any) -> str | None:
    """The most specific error message (innermost envelope first), or ``None``."""
    found = error_messages(doc)
    return found[-1] if found else None


def body_document(body: bytes) -> Any:
    """The parsed error body: JSON, else short plain text, else ``None`` (HTML, binary)."""
    doc = parse_json(body)
    if doc is not None:
        return doc
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or text.startswith("<") or len(text) > 1000:
        return None
    return text


def error_code(doc: Any) -> int | None:
    """The numeric error code (``code``/``error_code``) wherever the envelope puts it."""
    for obj in _walk(doc):
        for key in ("code", "error_code"):
            value = obj.get(key)
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                return value
            if isinstance(value, str) and value.strip().isdigit():
                return int(value.strip())
    return None


def is_session_expired(status: int, doc: Any) -> bool:
    """Nexus says the session is gone: HTTP 401, or the 4011 code with any status."""
    return status == 401 or error_code(doc) == SESSION_EXPIRED_CODE


def parse_retry_after(value: str | None, now: Callable[[], datetime]) -> float | None:
    """Seconds from MX's Retry-After (delta-seconds or HTTP-date), capped; ``None`` if unusable."""
    return retry_after.parse_retry_after(value, now, cap=MAX_RETRY_AFTER)


_SHAPE = {
    405: "method not allowed",
    406: "not acceptable (no valid API version or media type)",
    415: "unsupported media type",
}


def _summary(message: str | None) -> str:
    # MX messages are short and hold no secrets; cap them anyway so a huge body cannot bloat
    # an exception (and a log line) and strip control characters.
    if not message:
        return ""
    clean = "".join(ch if ch.isprintable() else " " for ch in message)[:200]
    return f": {clean}"


def error_for(
    status: int,
    doc: Any,
    *,
    what: str,
    retry_after: float | None = None,
) -> MxError:
    """The one error for a non-2xx answer. ``what`` names the call (no secrets, no tokens).

    401 and 403 map to the client-wide classes here; the client only lets them through once
    :mod:`worker.mx.health` says enough distinct users were refused (and Nexus session expiry
    is handled before this function). 405, 406 and 415 are about the request's shape (method,
    API version, media type), identical for every member, so they are client-wide at once.
    """
    message = error_message(doc)
    tail = _summary(message)
    not_oauth = any(NOT_OAUTH_MESSAGE.lower() in m.lower() for m in error_messages(doc))
    if status == 400 and not_oauth:
        return NotOAuthCapable(f"{what}: {NOT_OAUTH_MESSAGE}", status=status)
    if status == 401:
        return MxUnauthorized(f"{what}: 401 unauthorized{tail}", status=status)
    if status == 403:
        return MxForbidden(f"{what}: 403 forbidden{tail}", status=status)
    if status == 404:
        return MemberNotFound(f"{what}: 404 not found{tail}", status=status)
    if status in (405, 406, 415):
        return MxRequestRefused(
            f"{what}: {status} {_SHAPE[status]}{tail}; check REAUTH_MX_API, "
            "REAUTH_MX_API_VERSION and the base URL",
            status=status,
        )
    if status == 408:
        return MxTimeout(f"{what}: 408 request timeout", status=status)
    if status == 429:
        return RateLimited(f"{what}: 429 rate limited", status=status, retry_after=retry_after)
    if 400 <= status < 500:
        return MxBadRequest(f"{what}: {status}{tail}", status=status)
    if status >= 500:
        return ServerError(f"{what}: {status} server error", status=status)
    # 1xx/3xx: we never follow redirects, so any of these is an answer we cannot use.
    return BadResponse(f"{what}: unexpected status {status}", status=status)


def decode_success(status: int, body: bytes, *, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer.

    Raises:
        BadResponse: not JSON or not an object.
    """
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise BadResponse(f"{what}: {status} answer is not a JSON object", status=status)
    return doc


def require_str(doc: dict[str, Any], outer: str, inner: str, *, what: str, status: int) -> str:
    """``doc[outer][inner]`` as a non-empty string.

    Raises:
        BadResponse: missing, null, empty or not a string.
    """
    obj = doc.get(outer)
    value = obj.get(inner) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise BadResponse(f"{what}: answer has no {outer}.{inner}", status=status)
    return value
