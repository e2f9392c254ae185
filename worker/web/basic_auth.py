"""HTTP Basic credentials, checked once for every listener that needs them (MX webhooks on the
public port, the ops listener): both parts compared in constant time, whatever fails first."""

from __future__ import annotations

import base64
import binascii
import hmac


def matches(header: str | None, username: bytes, password: bytes) -> bool:
    """Whether an ``Authorization`` header carries exactly ``username`` and ``password``.

    A missing header, another scheme, bad base64 or no ``:`` is a plain False (never an
    error); user and password are each compared with :func:`hmac.compare_digest`, always both,
    so the time taken does not say which one was wrong.
    """
    if not header or header[:6].lower() != "basic ":
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, given = decoded.partition(b":")
    ok_user = hmac.compare_digest(user, username)
    ok_password = hmac.compare_digest(given, password)
    return bool(sep) and ok_user and ok_password
