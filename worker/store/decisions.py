"""The one writer of decisions: store a member's new re-authentication state.

Whoever decides (the regenerate step, an import, an OAuth result, a webhook) hands its
:class:`~worker.core.policy.ReauthFields` here. One rule, applied once: the columns are written,
any worker's claim on the member is revoked, and when the change ends an open episode
(:func:`~worker.core.policy.closes_episode`) the member's undelivered reminders are canceled, so
nobody is sent back to OAuth after they finished. The funnel events the change means
(:func:`~worker.core.funnel.change_events`: detected, link generated, gave up, confirmed, ...)
are recorded in the same transaction, with the episode's summary row (:mod:`worker.store.funnel`).
Never commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from models import Member
from worker.core.funnel import How, change_events
from worker.core.policy import ReauthFields, State, closes_episode
from worker.store import funnel, members, notifications


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
    #: Reminders sent before: given by the step that generated a link (a LINK event).
    before_reminders: int | None = None
    #: MX said the member is connected (an OAuth success, a confirmation or live read).
    confirmed: bool = False
    #: The decision opened an episode (even one MX refused at once).
    new_episode: bool = False

    @property
    def ends_episode(self) -> bool:
        return closes_episode(self.before, self.fields.state)


def apply(
    session: Session, changes: Iterable[Change], *, now: datetime, how: How = How.SCAN
) -> int:
    """Write ``changes`` (one bulk UPDATE) and cancel the reminders of ended episodes.

    ``how``: what brought these members here, recorded on the episodes they open.

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
    funnel.record(
        session,
        (
            e
            for c in changes
            for e in change_events(
                c.member_id,
                c.before,
                c.fields,
                now=now,
                how=how,
                before_reminders=c.before_reminders,
                confirmed=c.confirmed,
                new_episode=c.new_episode,
            )
        ),
    )
    written = {c.member_id for c in changes}
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Member) and obj.id in written:
            session.expire(obj)
    return len(ended)
