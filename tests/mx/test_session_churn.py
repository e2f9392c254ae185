"""Session churn: many of one user's calls in flight while MX expires the user's sessions.

The scenario that used to pause the fleet: 1,000 members of 10 users in one batch, MX (the
sandbox) answering in 100 ms and expiring every Nexus session after 5 uses. Calls that were
sent with a session MX has just expired meet 401/4011 again after their refresh; that is "get a
new session" (single-flight per user, a bounded number of tries, then a transient backoff), never
evidence about our credentials. So: every member is notified, and MX calls are never paused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from models import Member, Notification
from worker.clock import utc_now
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.service.regenerate import BatchResult, regenerate_batch
from worker.service.scan import run_scan
from worker.store.db import session_scope
from worker.store.locks import mx_paused

MEMBERS = 1000
USERS = 10


@pytest.fixture
def db_url(pg_url: str) -> str:
    """PostgreSQL only (the production backend): 1,000 members in one claimed batch."""
    return pg_url


@pytest.fixture
def churn_runtime(runtime: Runtime, redis_url: str) -> Iterator[Runtime]:
    """The test runtime with all 1,000 members in one batch, the Redis session cache and
    rate limiter shared like workers share them, and a rate limit above the load."""
    rt = Runtime(
        runtime.settings.model_copy(
            update={
                "batch_size": MEMBERS,
                "redis_url": redis_url,
                "mx_rate_limit_per_second": 100_000.0,
                "backoff_base": timedelta(seconds=1),
                "backoff_cap": timedelta(seconds=2),
            }
        )
    )
    yield rt
    rt.close()


def _seed(rt: Runtime, now: datetime) -> None:
    rows = [
        {
            "member_guid": f"MBR-churn-{i:04d}",
            "user_guid": f"USR-churn-{i % USERS}",
            "institution_code": "mxbank",
            "is_oauth": True,
            "connection_status": "EXPIRED",
            "channel": "BROWSER",
            "reauth_state": "idle",
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(MEMBERS)
    ]
    with rt.engine.begin() as conn:
        conn.execute(insert(Member), rows)


@pytest.mark.slow  # ~20 s: about 2,000 requests at 100 ms through the in-process sandbox
@pytest.mark.postgres
@pytest.mark.redis
def test_expiring_sessions_under_load_notify_everyone_without_a_fleet_pause(
    churn_runtime: Runtime, sandbox: RunningSandbox
) -> None:
    """1,000 members of 10 users in flight, 100 ms MX latency, sessions expiring every 5 uses:
    all notified, no configuration error, MX calls never paused."""
    rt = churn_runtime
    sandbox.config.update({"latency": 0.1, "session_max_uses": 5})
    now = utc_now()
    _seed(rt, now)
    results: list[BatchResult] = []
    clock_now = now

    def clock() -> datetime:
        return clock_now

    def dispatch(ids: list[int], owner: str) -> None:
        results.append(regenerate_batch(rt, ids, owner, clock=clock))

    # Members whose session kept expiring back off (transient) and are taken by the next scan,
    # once their backoff is over: the scan's clock moves past the (short) backoff cap.
    for _ in range(5):
        scan = run_scan(rt, dispatch, clock=clock, trigger="test")
        assert scan.paused is None
        with rt.engine.connect() as conn:
            notified = conn.scalar(select(func.count()).select_from(Notification))
        if notified == MEMBERS:
            break
        clock_now += timedelta(minutes=1)

    assert [r.configuration_error for r in results] == [None] * len(results)
    with session_scope(rt.sessions) as s:
        assert mx_paused(s, clock_now + timedelta(days=1)) is None
    with rt.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Notification)) == MEMBERS
        states = dict(
            conn.execute(
                select(Member.reauth_state, func.count()).group_by(Member.reauth_state)
            ).all()
        )
        assert states == {"awaiting_user": MEMBERS}
    expired = [r for r in sandbox.requests() if r["endpoint"] == "nexus" and r["status"] == 401]
    created = sum(1 for r in sandbox.requests() if r["endpoint"] == "sessions")
    # The scenario really churned: many expiries and new sessions, all absorbed.
    assert len(expired) > 50
    assert created >= MEMBERS // 5
