"""One message per person (``REAUTH_NOTIFY_GROUPING=user``): which due outbox rows go out
together, under which id, and as which message. Pure: rows and ``now`` are passed in.

The rules (docs/NOTIFICATIONS.md, "One message per person"):

* A row not yet in a group is held until its user's window has closed: ``REAUTH_GROUPING_WINDOW``
  after the user's earliest due row (its ``created_at``, when the decision made it due). Then
  every due row of that user goes out in one message. The window bounds the wait, never more:
  a row that becomes due after the message went out starts the next window.
* A group is fixed when it is first formed: its id is stored on its rows before the first
  delivery, and retries and redeliveries send the same rows under the same id. A row can only
  leave a group (its episode ended, so it was canceled), never join one.
* A group of one row is sent as that member's own ``reauth.oauth_link`` message with the row's
  id, exactly as with ``member`` grouping; a group of several as one ``reauth.oauth_links``
  message whose id is :func:`worker.core.contract.group_id` of the members' keys. A grouped
  message keeps that form and id even if only one of its rows is left.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.core.contract import build_group_message, group_id


@dataclass(frozen=True, slots=True)
class Row:
    """What grouping needs to know about one due outbox row."""

    id: uuid.UUID
    user_guid: str
    idempotency_key: str
    created_at: datetime
    #: The group it was first delivered in; None while it has never been grouped.
    group_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """The rows that go out as one message, in message order."""

    id: uuid.UUID
    user_guid: str
    rows: tuple[uuid.UUID, ...]
    #: Formed in this pass: its id must be stored on its rows before it is delivered.
    new: bool

    @property
    def grouped(self) -> bool:
        """Whether it goes out as a ``reauth.oauth_links`` message (else as the one row's own)."""
        return not (len(self.rows) == 1 and self.rows[0] == self.id)


def window_cutoff(now: datetime, window: timedelta) -> datetime:
    """A user's ungrouped rows are released once the earliest of them is due at or before this."""
    return now - window


def held_until(earliest_due: datetime, window: timedelta) -> datetime:
    """When a user's held rows go out at the latest (plus the relay's sweep period)."""
    return earliest_due + window


def _order(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.created_at, r.idempotency_key))


def form_groups(rows: Iterable[Row]) -> list[Group]:
    """Group due rows: rows already in a group keep it; the others go one group per user.

    Groups come oldest first (by their earliest row), rows within a group by when they became
    due, then by key.
    """
    stored: dict[uuid.UUID, list[Row]] = {}
    fresh: dict[str, list[Row]] = {}
    for row in rows:
        if row.group_id is not None:
            stored.setdefault(row.group_id, []).append(row)
        else:
            fresh.setdefault(row.user_guid, []).append(row)
    groups: list[tuple[datetime, Group]] = []
    for gid, found in stored.items():
        ordered = _order(found)
        groups.append(
            (ordered[0].created_at, Group(gid, ordered[0].user_guid, _ids(ordered), new=False))
        )
    for user, found in fresh.items():
        ordered = _order(found)
        # One row: its own id (sent as its own message); several: an id from their keys.
        gid = ordered[0].id if len(ordered) == 1 else group_id(r.idempotency_key for r in ordered)
        groups.append((ordered[0].created_at, Group(gid, user, _ids(ordered), new=True)))
    groups.sort(key=lambda pair: (pair[0], str(pair[1].id)))
    return [group for _, group in groups]


def singles(ids: Iterable[uuid.UUID]) -> list[Group]:
    """``member`` grouping: every row is its own message, in the order given."""
    return [Group(rid, "", (rid,), new=False) for rid in ids]


def _ids(rows: Sequence[Row]) -> tuple[uuid.UUID, ...]:
    return tuple(r.id for r in rows)


def message_for(group: Group, payloads: Mapping[uuid.UUID, Mapping[str, Any]]) -> dict[str, Any]:
    """The message a group is delivered as. Each row's id is authoritative for its ``id``."""
    members = [{**payloads[rid], "id": str(rid)} for rid in group.rows]
    if not group.grouped:
        return members[0]
    return build_group_message(message_id=group.id, user_guid=group.user_guid, members=members)
