"""reauth_funnel_events_total counts funnel events once their transaction commits, never those
of a rolled-back one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, select

from models import Episode, Member
from worker.config import load_settings
from worker.core.funnel import Event, Stage
from worker.runtime import Runtime
from worker.store import funnel
from worker.store.db import session_scope

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LABELS = {"stage": "detected", "reason": "revoked", "channel": "APP"}


@pytest.fixture
def rt(db_url: str) -> Iterator[Runtime]:
    runtime = Runtime(load_settings(database_url=db_url))
    yield runtime
    runtime.close()


def _count() -> float:
    return REGISTRY.get_sample_value("reauth_funnel_events_total", LABELS) or 0.0


def test_counted_after_commit_only(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        mid = conn.execute(
            insert(Member).values(
                member_guid="MBR-metric", user_guid="USR-metric", institution_code="chase",
                is_oauth=True, channel="APP", is_being_aggregated=False, reauth_state="idle",
                episode=0, reminders_sent=0, attempts=0, created_at=NOW, updated_at=NOW,
            ).returning(Member.id)
        ).scalar_one()  # fmt: skip
    before = _count()

    def failing_batch() -> None:
        with session_scope(rt.sessions) as s:
            funnel.record(s, [Event(mid, 1, Stage.DETECTED, NOW, detail="revoked", how="scan")])
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        failing_batch()
    assert _count() == before
    with session_scope(rt.sessions) as s:
        funnel.record(s, [Event(mid, 1, Stage.DETECTED, NOW, detail="revoked", how="scan")])
        assert _count() == before  # not yet: the transaction is open
    assert _count() == before + 1


@pytest.mark.postgres
def test_concurrent_writers_of_one_episode_lose_nothing(pg_url: str) -> None:
    """The relay (notified) and a click on the same episode at once: the second waits for the
    first's row lock and advances what it wrote, instead of overwriting it."""
    import threading

    rt = Runtime(load_settings(database_url=pg_url))
    try:
        with rt.engine.begin() as conn:
            mid = conn.execute(
                insert(Member).values(
                    member_guid="MBR-race", user_guid="USR-race", institution_code="chase",
                    is_oauth=True, channel="APP", is_being_aggregated=False,
                    reauth_state="awaiting_user", episode=1, reminders_sent=1, attempts=0,
                    created_at=NOW, updated_at=NOW,
                ).returning(Member.id)
            ).scalar_one()  # fmt: skip
        with session_scope(rt.sessions) as s:
            funnel.record(s, [Event(mid, 1, Stage.DETECTED, NOW, detail="revoked", how="scan")])
        done = threading.Event()

        def click() -> None:
            with session_scope(rt.sessions) as s2:
                funnel.record(s2, [Event(mid, 1, Stage.CLICKED, NOW)])
            done.set()

        with session_scope(rt.sessions) as s1:
            funnel.record(s1, [Event(mid, 1, Stage.NOTIFIED, NOW, reminder=1)])
            other = threading.Thread(target=click)
            other.start()
            assert not done.wait(1.0)  # blocked on our row lock
        other.join(timeout=30)
        assert done.is_set()
        with rt.engine.connect() as conn:
            row = conn.execute(select(Episode).where(Episode.member_id == mid)).one()
        assert row.notified_at == NOW
        assert row.clicked_at == NOW
        assert row.reminders_sent == 1
    finally:
        rt.close()
