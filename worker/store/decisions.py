"""The one writer of decisions: store a member's new re-authentication state.

Whoever decides (the regenerate step, an import, an OAuth result, a webhook) hands its
:class:`~worker.core.policy.ReauthFields` here. One rule, applied once: the columns are written,
any worker's claim on the member is revoked, and when the change ends an open episode
(:func:`~worker.core.policy.closes_episode`) the member's undelivered reminders are canceled, so
nobody is sent back to OAuth after they finished. Never commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from models import Member
from worker.core.policy import ReauthFields, State, closes_episode
from worker.store import members, notifications


@dataclass(frozen=True)
class Change:
    """A decision about one member: its state before, the fields after, extra columns."""

    member_id: int
    before: State
    fields: ReauthFields
    #: A decision taken without an MX call keeps the member's last error.
    keep_last_error: bool = False
    #: Other columns written in the same statement (e.g. the new URI).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ends_episode(self) -> bool:
        return closes_episode(self.before, self.fields.state)


def apply(session: Session, changes: Iterable[Change], *, now: datetime) -> int:
    """Write ``changes`` (one bulk UPDATE) and cancel the reminders of ended episodes.

    Returns how many episodes ended. Objects of these members already loaded in ``session``
    are expired, so later reads see what was written.
    """
    changes = list(changes)
    if not changes:
        return 0
    members.update_members(
        session,
        [
            {
                "id": c.member_id,
                **members.fields_to_columns(c.fields, keep_last_error=c.keep_last_error),
                **c.extra,
            }
            for c in changes
        ],
    )
    ended = [c.member_id for c in changes if c.ends_episode]
    notifications.cancel_pending(session, ended, now)
    written = {c.member_id for c in changes}
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Member) and obj.id in written:
            session.expire(obj)
    return len(ended)
