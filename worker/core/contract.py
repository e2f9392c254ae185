"""The notification message contract (version 1). Downstream consumers depend on it: keep it
stable, add fields only, and bump :data:`VERSION` for anything else. Documented in
docs/NOTIFICATIONS.md."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

#: ``type`` of every message this service emits.
MESSAGE_TYPE = "reauth.oauth_link"
#: Contract version; consumers should accept unknown fields.
VERSION = 1


def idempotency_key(member_guid: str, episode: int, reminder: int) -> str:
    """One notification per (member, episode, reminder): the outbox's unique key."""
    return f"{member_guid}:{episode}:{reminder}"


def format_time(value: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` suffix, the contract's time format."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def link_is_stale(payload: dict[str, Any], now: datetime, max_age: timedelta) -> bool:
    """Whether the message's one-time URI must be regenerated before delivery: older than
    ``max_age`` or of unknown age. A message without a URI (reconnect mode) never is."""
    if payload.get("oauth_window_uri") is None:
        return False
    generated = link_generated_at(payload)
    return generated is None or now - generated > max_age


def link_generated_at(payload: dict[str, Any]) -> datetime | None:
    """When a message's link was generated, or None when that cannot be read (then the link
    counts as stale: delivering a dead one-time link is worse than delivering it late)."""
    raw = payload.get("generated_at")
    if not isinstance(raw, str):
        return None
    try:
        generated = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return generated if generated.tzinfo is not None else None


def build_message(
    *,
    notification_id: uuid.UUID,
    user_guid: str,
    member_guid: str,
    institution_code: str,
    reason: str,
    oauth_window_uri: str | None,
    generated_at: datetime | None,
    episode: int,
    reminder: int,
    skip_aggregation: bool,
    channel: str,
    reconnect_url: str | None = None,
) -> dict[str, Any]:
    """The JSON object delivered to every sink.

    ``reconnect_url`` (added in version 1: fields are only ever added) is our stable link that
    asks MX for a fresh URI when the person clicks; ``oauth_window_uri`` is MX's one-time URI,
    null when ``REAUTH_LINK_MODE=reconnect`` asks MX only at click time.
    """
    return {
        "id": str(notification_id),
        "idempotency_key": idempotency_key(member_guid, episode, reminder),
        "type": MESSAGE_TYPE,
        "version": VERSION,
        "user_guid": user_guid,
        "member_guid": member_guid,
        "institution_code": institution_code,
        "reason": reason,
        "oauth_window_uri": oauth_window_uri,
        "generated_at": format_time(generated_at) if generated_at is not None else None,
        "reconnect_url": reconnect_url,
        "episode": episode,
        "reminder": reminder,
        "skip_aggregation": skip_aggregation,
        "channel": channel,
    }
