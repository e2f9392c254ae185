"""The notification message contract (version 1). Downstream consumers depend on it: keep it
stable, add fields only, and bump :data:`VERSION` for anything else. Documented in
docs/NOTIFICATIONS.md."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

#: ``type`` of a message about one member (the only kind with ``REAUTH_NOTIFY_GROUPING=member``).
MESSAGE_TYPE = "reauth.oauth_link"
#: ``type`` of a message listing several members of one user (``REAUTH_NOTIFY_GROUPING=user``).
GROUP_MESSAGE_TYPE = "reauth.oauth_links"
#: Namespace of :func:`group_id` (uuid5): fixed forever, so the same keys give the same id.
GROUP_NAMESPACE = uuid.UUID("5d0c8a8e-2f4b-4c39-9a51-6f0e2b7d9c13")
#: What a grouped message lists for each member: the member message's fields except those the
#: group carries once (``type``, ``version``, ``user_guid``). ``id`` is the member's
#: notification id.
GROUP_MEMBER_FIELDS = (
    "id",
    "idempotency_key",
    "member_guid",
    "institution_code",
    "reason",
    "oauth_window_uri",
    "generated_at",
    "reconnect_url",
    "episode",
    "reminder",
    "skip_aggregation",
    "channel",
)
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


def group_id(keys: Iterable[str]) -> uuid.UUID:
    """The id of a grouped message: a uuid5 of its members' idempotency keys (sorted, so the
    order they were read in does not matter). Fixed when the group is first formed and stored
    on its rows, so every redelivery carries the same id: the consumer's dedupe key."""
    return uuid.uuid5(GROUP_NAMESPACE, "\n".join(sorted(set(keys))))


def build_group_message(
    *, message_id: uuid.UUID, user_guid: str, members: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The JSON object of a grouped message: one person, several members.

    ``members`` are the members' own messages (:func:`build_message` output with their
    notification ids), in the order the person should read them; each is listed with
    :data:`GROUP_MEMBER_FIELDS`.
    """
    entries = [{name: member.get(name) for name in GROUP_MEMBER_FIELDS} for member in members]
    return {
        "id": str(message_id),
        "type": GROUP_MESSAGE_TYPE,
        "version": VERSION,
        "user_guid": user_guid,
        "idempotency_keys": [entry["idempotency_key"] for entry in entries],
        "members": entries,
    }
