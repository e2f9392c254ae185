"""Where the sandbox's members come from: on the fly, a JSON file, or the project's database.

On the fly (the default) every member guid exists, with conventions the demo seeds on purpose:

* a guid containing ``GONE`` is unknown (404);
* a guid containing ``NOOAUTH`` belongs to an institution without OAuth (400 "Member cannot use
  OAuth");
* with any source, a guid containing ``MOVED`` is answered under another guid,
  ``MBR-moved-<asked guid>``, so the pipeline's "MX answered with a different member" path runs;
* with any source, a guid containing ``BLANKURI`` gets a 200 whose ``oauth_window_uri`` is null
  (MX's answer for a member that cannot use OAuth), and one containing ``FOREIGNURI`` a URI on
  ``foreign_uri_base`` (a bank's own authorize page, say);
* a *user* id containing ``NOUSER`` is refused by the SSO API (``sso_user_failure_status``).

On-the-fly members have ``default_connection_status``; ``PUT /_sandbox/members/{guid}`` (or
:meth:`worker.sandbox.app.Sandbox.set_member_state`) overrides any member's live state.

A JSON file is a list (or ``{"members": [...]}``) of objects with ``member_guid``,
``user_guid``, optional ``user_id``, ``member_id`` (the partner's id: Platform v20250224 paths
accept it), ``is_oauth`` (default true), ``connection_status``, ``is_being_aggregated``,
``aggregated_at`` and ``successfully_aggregated_at``. The database source reads the ``members``
table through a plain engine (no write lock on SQLite, unlike the worker's engine); a guid that
is not in the file or table is 404. Members of a file or the database belong to their user:
asking for them under another user is a 404, as MX would answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, create_engine, select

#: Guid markers of the on-the-fly source.
GONE_MARKER = "GONE"
NOT_OAUTH_MARKER = "NOOAUTH"
MOVED_MARKER = "MOVED"
BLANK_URI_MARKER = "BLANKURI"
FOREIGN_URI_MARKER = "FOREIGNURI"
#: User-id marker: the SSO API refuses this user.
NO_USER_MARKER = "NOUSER"


@dataclass(frozen=True)
class SandboxMember:
    guid: str
    is_oauth: bool = True
    #: None: belongs to whichever user asks (on-the-fly members).
    user_guid: str | None = None
    user_id: str | None = None
    member_id: str | None = None
    #: Made up on the fly: its live state comes from the sandbox's defaults.
    generated: bool = False
    connection_status: str | None = None
    is_being_aggregated: bool = False
    #: ISO 8601 text, as MX sends it.
    aggregated_at: str | None = None
    successfully_aggregated_at: str | None = None

    def belongs_to(self, user: str) -> bool:
        return self.user_guid is None or user in {self.user_guid, self.user_id}


def answered_guid(guid: str) -> str:
    """The member guid the sandbox answers with (``MOVED`` convention)."""
    return f"MBR-moved-{guid}" if MOVED_MARKER in guid else guid


class MemberSource(Protocol):
    def lookup(self, guid: str) -> SandboxMember | None: ...

    def lookup_id(self, member_id: str) -> SandboxMember | None:
        """By the partner's member id (Platform v20250224 paths)."""
        ...

    def close(self) -> None: ...


class OnTheFlyMembers:
    """Every guid exists, except the GONE/NOOAUTH conventions."""

    def lookup(self, guid: str) -> SandboxMember | None:
        if GONE_MARKER in guid:
            return None
        return SandboxMember(guid=guid, is_oauth=NOT_OAUTH_MARKER not in guid, generated=True)

    def lookup_id(self, member_id: str) -> SandboxMember | None:
        # Any id is a member on the fly; MX answers with the member's guid, made up here.
        member = self.lookup(member_id)
        return (
            None
            if member is None
            else SandboxMember(
                guid=f"MBR-{member_id}",
                is_oauth=member.is_oauth,
                member_id=member_id,
                generated=True,
            )
        )

    def close(self) -> None:
        return None


class JsonFileMembers:
    """Members listed in a JSON file, read once."""

    def __init__(self, path: str) -> None:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = raw.get("members", []) if isinstance(raw, dict) else raw
        self._members: dict[str, SandboxMember] = {}
        self._by_id: dict[str, SandboxMember] = {}
        for row in rows:
            member = SandboxMember(
                guid=row["member_guid"],
                is_oauth=bool(row.get("is_oauth", True)),
                user_guid=row.get("user_guid"),
                user_id=row.get("user_id"),
                member_id=row.get("member_id"),
                connection_status=row.get("connection_status", "CONNECTED"),
                is_being_aggregated=bool(row.get("is_being_aggregated", False)),
                aggregated_at=row.get("aggregated_at"),
                successfully_aggregated_at=row.get("successfully_aggregated_at"),
            )
            self._members[member.guid] = member
            if member.member_id:
                self._by_id[member.member_id] = member

    def lookup(self, guid: str) -> SandboxMember | None:
        return self._members.get(guid)

    def lookup_id(self, member_id: str) -> SandboxMember | None:
        return self._by_id.get(member_id)

    def close(self) -> None:
        return None


class DatabaseMembers:
    """Members are rows of the project's ``members`` table (read-only)."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url, pool_pre_ping=True)

    def lookup(self, guid: str) -> SandboxMember | None:
        from models import Member

        stmt = select(
            Member.member_guid,
            Member.is_oauth,
            Member.user_guid,
            Member.user_id,
            Member.connection_status,
            Member.is_being_aggregated,
            Member.successfully_aggregated_at,
        ).where(Member.member_guid == guid)
        with self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        aggregated = row[6].isoformat() if row[6] is not None else None
        return SandboxMember(
            guid=row[0],
            is_oauth=bool(row[1]),
            user_guid=row[2],
            user_id=row[3],
            connection_status=row[4],
            is_being_aggregated=bool(row[5]),
            successfully_aggregated_at=aggregated,
        )

    def lookup_id(self, member_id: str) -> SandboxMember | None:
        return None  # the members table holds no partner member ids

    def close(self) -> None:
        self._engine.dispose()


def open_source(members_file: str | None, members_db_url: str | None) -> MemberSource:
    """The configured source: file, else database, else on the fly."""
    if members_file:
        return JsonFileMembers(members_file)
    if members_db_url:
        return DatabaseMembers(members_db_url)
    return OnTheFlyMembers()
