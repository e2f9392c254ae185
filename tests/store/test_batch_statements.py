"""A batch's writes cost a bounded number of statements, whatever its size.

Counted on the wire: a ``before_cursor_execute`` listener counts one statement per call, and one
per parameter set of an executemany (psycopg runs those as one statement each, pipelined; the
multi-row statement of insertmanyvalues, flagged executemany too, binds one flat set).
The values written are checked too, so the single-statement path keeps the semantics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from models import Attempt, Episode, Member
from worker.core.policy import Reason, ReauthFields, State
from worker.store import attempts, decisions, funnel

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@contextmanager
def counted(engine: Engine) -> Iterator[list[str]]:
    sent: list[str] = []

    def before(*args: Any) -> None:
        statement, params, many = args[2], args[3], args[5]
        rows = many and isinstance(params, list) and isinstance(params[0], (dict, tuple))
        sent.extend([statement.split(None, 1)[0].upper()] * (len(params) if rows else 1))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", before)


def seed(sessions: sessionmaker[Session], n: int, first: int) -> list[int]:
    with sessions.begin() as s:
        s.execute(
            insert(Member),
            [
                {
                    "member_guid": f"MBR-{first + i}",
                    "user_guid": f"USR-{first + i}",
                    "institution_code": "chase",
                    "is_oauth": True,
                    "channel": "APP" if i % 2 else "BROWSER",
                }
                for i in range(n)
            ],
        )
        got = s.scalars(select(Member.id).where(Member.member_guid.like("MBR-%"))).all()
    return sorted(got)[first : first + n]


def open_and_link(ids: list[int]) -> list[decisions.Change]:
    fields = ReauthFields(
        State.AWAITING_USER, Reason.REVOKED, 1, NOW, 1, 1, NOW + timedelta(hours=1)
    )
    return [
        decisions.Change(
            i, State.IDLE, fields, extra={"oauth_window_uri": f"https://x/{i}"}, before_reminders=0
        )
        for i in ids
    ]


def attempt(member_id: int) -> dict[str, Any]:
    return {
        "member_id": member_id,
        "episode": 1,
        "reminder": 1,
        "reason": "revoked",
        "mx_api": "platform",
        "referral_source": "APP",
        "skip_aggregation": True,
        "skip_aggregation_why": "reauth",
        "outcome": "generated",
        "latency_ms": 101.5,
    }


def batch(engine: Engine, sessions: sessionmaker[Session], ids: list[int]) -> list[str]:
    """Log an MX call and open an episode with a link for each member, then record each one
    notified (the regenerate step's and the relay's writes)."""
    with counted(engine) as sent, sessions.begin() as s:
        attempts.add(s, [attempt(i) for i in ids])
        decisions.apply(s, open_and_link(ids), now=NOW)
        funnel.notified(s, [(i, 1, 1) for i in ids], NOW)
    return sent


def test_a_batch_costs_the_same_statements_whatever_its_size(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    small = batch(engine, sessions, seed(sessions, 3, 0))
    large_ids = seed(sessions, 60, 3)
    large = batch(engine, sessions, large_ids)
    if engine.dialect.name == "postgresql":  # SQLite runs in process: executemany is fine there
        assert sorted(large) == sorted(small), __import__("collections").Counter(large)
        # attempts: 1 INSERT; members: 1 UPDATE; outbox cancel: none (nothing ended); events:
        # 2 INSERTs (detected + link, notified); summaries: 2 locked reads, 1 read of members,
        # 1 INSERT, 1 UPDATE.
        assert large.count("UPDATE") == 2, large
        assert large.count("INSERT") == 4, large
        assert len(large) <= 10, large

    with sessions() as s:
        rows = {
            r.member_id: r
            for r in s.scalars(select(Episode).where(Episode.member_id.in_(large_ids)))
        }
        members = {m.id: m for m in s.scalars(select(Member).where(Member.id.in_(large_ids)))}
    assert sorted(rows) == large_ids
    with sessions() as s:
        logged = {a.member_id: a for a in s.scalars(select(Attempt))}
    assert set(large_ids) <= set(logged)
    assert logged[large_ids[0]].latency_ms == 101.5
    assert logged[large_ids[0]].trigger == "scan"  # the column's default, applied
    for i in large_ids:
        r, m = rows[i], members[i]
        assert (r.episode, r.reason, r.detected_how) == (1, "revoked", "scan")
        assert r.channel == m.channel
        assert r.institution_code == "chase"
        assert r.detected_at == r.link_at == r.notified_at == NOW
        assert r.reminders_sent == 1
        assert r.outcome is None
        assert (m.reauth_state, m.episode, m.attempts) == ("awaiting_user", 1, 1)
        assert m.oauth_window_uri == f"https://x/{i}"
        assert m.next_attempt_at == NOW + timedelta(hours=1)
        assert m.claim_owner is None
        assert m.updated_at > m.created_at


def test_a_naive_datetime_is_still_refused(sessions: sessionmaker[Session]) -> None:
    ids = seed(sessions, 2, 0)
    naive = ReauthFields(State.PENDING, Reason.REVOKED, 1, NOW, 0, 0, datetime(2026, 1, 1))
    with pytest.raises(Exception, match="naive datetime"), sessions.begin() as s:
        decisions.apply(s, [decisions.Change(i, State.IDLE, naive) for i in ids], now=NOW)
