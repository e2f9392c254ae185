"""Our own links: the ``reconnect_url`` a message carries and the APP flow's ``state``."""

from __future__ import annotations

import uuid
from datetime import datetime

from worker.config import Settings
from worker.core import tokens


def reconnect_url(settings: Settings, notification_id: uuid.UUID, now: datetime) -> str | None:
    """``REAUTH_PUBLIC_URL/r/<token>`` for a notification, or None when links are not set up."""
    if not settings.reconnect_enabled:
        return None
    token = tokens.sign(
        tokens.RECONNECT, notification_id, now + settings.reconnect_ttl, settings.reconnect_keys[0]
    )
    return f"{settings.public_url}/r/{token}"


def with_state(
    settings: Settings, redirect_url: str | None, notification_id: uuid.UUID, now: datetime
) -> str | None:
    """An APP redirect that points at our own ``/oauth/complete`` gets a signed ``state`` naming
    the notification, so the result it brings back can be tied to a real link. Any other
    redirect (the app's own) is left as configured."""
    if redirect_url is None or not settings.reconnect_enabled:
        return redirect_url
    ours = f"{settings.public_url}/oauth/complete"
    if redirect_url.split("?", 1)[0] != ours:
        return redirect_url
    token = tokens.sign(
        tokens.STATE, notification_id, now + settings.reconnect_ttl, settings.reconnect_keys[0]
    )
    separator = "&" if "?" in redirect_url else "?"
    return f"{redirect_url}{separator}state={token}"
