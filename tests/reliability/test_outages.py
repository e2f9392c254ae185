"""Scenarios 3 and 4: Redis restarted and PostgreSQL connections killed in the middle of a run.

Redis runs without persistence (``--save "" --appendonly no``, like Celery's smoke suite), so a
restart loses the queued and unacked Celery messages, the MX session cache, the rate-limit state
and the notification stream. The database is the source of truth: claims run out and are
retaken by the next scan, the outbox is still there, and the relay delivers what it had not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.e2e.e2e_helpers import celery_worker, run_cli, wait_for
from tests.pipeline_helpers import populate
from tests.reliability.reliability_helpers import (
    RedisServer,
    check_consistency,
    check_invariant,
    counts,
    drive,
    env_for,
    free_port,
    nudger,
    stream_ids,
)
from worker.clock import utc_now
from worker.sandbox.config import SandboxConfig
from worker.sandbox.server import RunningSandbox, running_sandbox

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.postgres]

TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    # Slow enough answers that the run is still going when the outage hits.
    with running_sandbox(SandboxConfig(latency=0.2, jitter=0.1)) as sb:
        yield sb


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_redis_restart_mid_run_loses_nothing(
    pg_url: str, sandbox: RunningSandbox, own_redis: RedisServer, tmp_path: Path, engines: Any
) -> None:
    """Redis (broker, stream, session cache, rate limiter) is killed mid-run and started again
    empty: the worker reconnects, a rescan retakes the claims of the dropped messages, pending
    outbox rows are delivered, and every eligible member ends with exactly one notification."""
    engine = engines(pg_url)
    expected = populate(engine, 168, utc_now())
    want = sum(k.notified for k in expected.values())
    url = own_redis.url
    env = env_for(sandbox, db_url=pg_url, redis_url=url, REAUTH_MX_MAX_CONCURRENCY="4")
    delivered: list[str] = []
    with celery_worker(env, log_path=tmp_path / "worker.log", concurrency=2):
        assert run_cli(env, "scan").returncode == 0
        wait_for(lambda: counts(engine)["notes"] > 0, timeout=60, what="first notifications")
        # Stop writes, read what was delivered so far (it dies with this Redis), then crash it.
        r = redis.Redis.from_url(url)
        try:
            r.client_pause(10_000, all=False)
            delivered += stream_ids(url)
        finally:
            r.close()
        own_redis.crash()
        mid = counts(engine)
        assert mid["notes"] < want, "the outage must hit mid-run"
        time.sleep(3)  # the worker notices: tasks lose their broker, MX calls their Redis
        check_consistency(engine)
        own_redis.start()
        with nudger(url) as nudge:
            time.sleep(3.2)  # claims of the messages Redis lost run out
            drive(nudge, engine, expected, timeout=120, every=1.5)
        delivered += stream_ids(url)
    check_invariant(engine, expected, sandbox.requests(), delivered)


@pytest.mark.redis
def test_postgres_connections_killed_mid_run(
    pg_url: str, broker_url: str, sandbox: RunningSandbox, tmp_path: Path, engines: Any
) -> None:
    """Every connection to the database is terminated, twenty times a second for three
    seconds and on until a task has met a kill, while batches run: tasks fail with
    StorageError and are retried (or their claims retaken by a rescan), no batch is ever
    half-written, and the run ends with exactly one notification per member."""
    engine = engines(pg_url)
    expected = populate(engine, 168, utc_now())
    want = sum(k.notified for k in expected.values())
    env = env_for(
        sandbox,
        db_url=pg_url,
        redis_url=broker_url,
        REAUTH_MX_MAX_CONCURRENCY="4",
        REAUTH_LOG_LEVEL="INFO",  # Celery logs task retries at INFO
        PYTHONUNBUFFERED="1",  # the log is read while the worker runs
    )
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    killed = 0
    log_path = tmp_path / "worker.log"

    def met_a_kill() -> bool:
        return "StorageError" in log_path.read_text(errors="replace")

    def work_left() -> bool:
        try:
            return counts(engine)["notes"] < want
        except OperationalError:  # our own connection was killed too
            return True

    with celery_worker(env, log_path=log_path, concurrency=2):
        assert run_cli(env, "scan").returncode == 0
        wait_for(lambda: counts(engine)["notes"] > 0, timeout=60, what="first notifications")
        with admin.connect() as conn:
            # Three seconds at least, and on until a task has met a killed connection: a kill
            # only fails a task when it lands inside one of its transactions (pool_pre_ping
            # replaces a connection killed while idle), so a fixed window is a matter of luck.
            start = time.monotonic()
            while time.monotonic() < start + 3 or (
                not met_a_kill() and time.monotonic() < start + 30 and work_left()
            ):
                killed += len(conn.execute(text(TERMINATE)).all())
                time.sleep(0.05)
        check_consistency(engine)
        assert counts(engine)["notes"] < want, "the connection loss must hit mid-run"
        with nudger(broker_url) as nudge:
            drive(nudge, engine, expected, timeout=120, every=1.5)
    admin.dispose()
    assert killed > 0
    check_invariant(engine, expected, sandbox.requests(), stream_ids(broker_url))
    # The kills hit work in progress: tasks saw database errors and were retried.
    assert met_a_kill(), "no task met a killed connection"
