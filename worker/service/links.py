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
