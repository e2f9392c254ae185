"""``bulk.one_of``: the batch's ``IN (ids)`` as one array literal on PostgreSQL selects exactly
what ``IN`` selects, for ints, UUIDs and strings that need quoting in an array literal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from models import Member, Notification
from worker.store import bulk

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
AWKWARD = ["MBR-a:1:1", 'with "quotes"', "back\\slash", "comma,brace{}", "sp ace", "NULL"]


def test_one_of_selects_what_in_selects(engine: Engine, sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        s.execute(
            insert(Member),
            [
                {"member_guid": g, "user_guid": "U", "institution_code": "chase"}
                for g in [*AWKWARD, "other"]
            ],
        )
        ids = {m.member_guid: m.id for m in s.scalars(select(Member))}
        nids = [uuid.uuid4() for _ in AWKWARD]
        s.execute(
            insert(Notification),
            [
                {
                    "id": n,
                    "idempotency_key": k,
                    "member_id": ids[k],
                    "payload": {},
                    "created_at": NOW,
                }
                for n, k in zip(nids, AWKWARD, strict=True)
            ],
        )
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    with sessions() as s:
        by_guid = set(
            s.scalars(select(Member.member_guid).where(bulk.one_of(s, Member.member_guid, AWKWARD)))
        )
        by_id = set(
            s.scalars(
                select(Member.id).where(bulk.one_of(s, Member.id, [ids[g] for g in AWKWARD[:2]]))
            )
        )
        by_uuid = set(
            s.scalars(select(Notification.id).where(bulk.one_of(s, Notification.id, nids[:3])))
        )
        none = list(s.scalars(select(Member.id).where(bulk.one_of(s, Member.id, []))))
    assert by_guid == set(AWKWARD)
    assert by_id == {ids[AWKWARD[0]], ids[AWKWARD[1]]}
    assert by_uuid == set(nids[:3])
    assert none == []
    if engine.dialect.name == "postgresql":
        assert all(" IN " not in q for q in sent[:3]), sent
