"""A backlog larger than one relay pass queues the next pass at once (not at beat's next tick).

Found by the 100,000-due benchmark run: without beat, delivery stopped after the passes that
commits had queued, each capped at MAX_ROUNDS batches, and the rest waited for the sweeper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from notify_helpers import NOW, RecordingSink, add_notification
from sqlalchemy.orm import Session, sessionmaker

from worker.app import jobs
from worker.config import Settings
from worker.runtime import Runtime
from worker.service import deliver as delivery


class CountingFollowups:
    """Stands for the Celery follow-ups: counts the relay passes a job queues."""

    def __init__(self) -> None:
        self.queued = 0

    def deliver(self) -> None:
        self.queued += 1

    def delivery_started(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def rt(db_url: str, settings_for: Callable[..., Settings]) -> Iterator[Runtime]:
    runtime = Runtime(settings_for(db_url, notify_batch_size=2), inline=False)
    runtime._sink = RecordingSink()  # type: ignore[assignment]
    runtime._followups = CountingFollowups()  # type: ignore[assignment]
    yield runtime
    runtime.close()


def test_a_pass_stopped_by_its_round_cap_queues_the_next_one(
    rt: Runtime, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "MAX_ROUNDS", 2)
    for _ in range(5):
        add_notification(sessions, generated_at=NOW - timedelta(seconds=30))
    followups = rt._followups
    assert isinstance(followups, CountingFollowups)
    sink = rt._sink
    assert isinstance(sink, RecordingSink)

    first = jobs.deliver(rt, owner="pass-1", clock=lambda: NOW)
    assert first["sent"] == 4
    assert first.get("more") is True
    assert followups.queued == 1  # the rest is not left to beat

    second = jobs.deliver(rt, owner="pass-2", clock=lambda: NOW)
    assert second["sent"] == 1
    assert "more" not in second
    assert followups.queued == 1  # drained: nothing more queued
    assert len(sink.delivered) == 5


def test_a_drained_outbox_queues_nothing(rt: Runtime) -> None:
    followups = rt._followups
    assert isinstance(followups, CountingFollowups)
    totals = jobs.deliver(rt, owner="pass-1", clock=lambda: NOW)
    assert totals.get("sent", 0) == 0
    assert "more" not in totals
    assert followups.queued == 0
