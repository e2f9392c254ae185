"""Erasure: ``reauth forget --user GUID | --member GUID --why TEXT``.

One transaction removes the members named and everything that names them (attempts, outbox rows,
pending ones included, which cancels them; clicks; funnel events and episodes), replaces their
guids inside earlier audit rows, and records one ``ops_actions`` row that holds no personal
data: the actor, the time, the reason, whether a user or a member was forgotten, the guid's
SHA-256, and counts.

Idempotent: forgetting a guid again finds nothing and records nothing new. A member that comes
back later (an import) is a new row and starts afresh: episode 0, no reminders sent.
Not reached: messages already handed to the sink (a Redis stream, a webhook receiver, a file)
and log lines (they carry guids, never links); those live outside this database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from worker.core.erasure import guid_digest, placeholder, redact
from worker.errors import InputError
from worker.store import audit, erasure, inbox


def forget(
    session: Session,
    *,
    user_guid: str | None,
    member_guid: str | None,
    why: str,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Forget one user (all their members) or one member; returns what was done."""
    if (user_guid is None) == (member_guid is None):
        raise InputError("forget needs exactly one of --user or --member")
    guid = (user_guid or member_guid or "").strip()
    if not guid:
        raise InputError("the guid to forget must not be empty")
    if not why.strip():
        raise InputError("--why must say why")
    by = "user" if user_guid is not None else "member"
    found = erasure.members_of(
        session,
        user_guid=guid if by == "user" else None,
        member_guid=guid if by == "member" else None,
    )
    # The guids that name this person here; a member forgotten alone leaves its user's guid,
    # which still names their other members.
    names = {guid}
    for m in found:
        names.add(m.member_guid)
        if m.mx_member_guid:
            names.add(m.mx_member_guid)
    counts = erasure.delete_members(session, [m.id for m in found])
    replace = {name: placeholder(name) for name in sorted(names, key=len, reverse=True)}
    counts["webhook_events"] = inbox.forget(
        session, member_guids=sorted(names), user_guid=guid if by == "user" else None
    )
    counts["ops_actions_redacted"] = erasure.redact_actions(session, replace)
    digest = guid_digest(guid)
    already = not found and erasure.forget_recorded(session, digest)
    if not already:
        audit.record_action(
            session,
            actor=actor,
            command="forget",
            arguments={"by": by, "guid_sha256": digest},
            # Even the reason must not name the person.
            why=redact(why, replace),
            result=counts,
            now=now,
        )
    return {"by": by, "guid_sha256": digest, "already_forgotten": already, **counts}
