"""End to end with a real Celery worker process on PostgreSQL + Redis, and the CLI on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from models import Member, Notification
from tests.e2e.e2e_helpers import celery_worker, reauth_env, run_cli, wait_for
from tests.pipeline_helpers import check_outcome, outbox_by_guid, populate
from worker.clock import utc_now
from worker.sandbox.config import SandboxConfig
from worker.sandbox.server import RunningSandbox, running_sandbox
from worker.store.db import make_engine

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxConfig(latency=0.005)) as sb:
        yield sb


def _settled(engine: object, expected_notified: int) -> bool:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        notes = conn.scalar(select(func.count()).select_from(Notification))
        claimed = conn.scalar(
            select(func.count()).select_from(Member).where(Member.claim_owner.is_not(None))
        )
        pending = conn.scalar(
            select(func.count()).select_from(Notification).where(Notification.status == "pending")
        )
    return notes == expected_notified and claimed == 0 and pending == 0


def test_thousand_members_through_a_real_worker(
    pg_url: str, redis_url: str, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """1,000 members, `reauth scan` enqueuing on Redis, a prefork Celery worker processing:
    each eligible member gets exactly one notification on the stream with the right reason and
    parameters (per the sandbox's request log), no ineligible one gets any, and a second scan
    right after creates none."""
    engine = make_engine(pg_url)
    expected = populate(engine, 1000, utc_now())
    notified = sum(k.notified for k in expected.values())
    env = reauth_env(
        db_url=pg_url,
        redis_url=redis_url,
        mx_base_url=sandbox.base_url,
        mx_sso_base_url=sandbox.sso_base_url,
    )
    with celery_worker(env, log_path=tmp_path / "worker.log"):
        scan = run_cli(env, "scan", "--json")
        assert scan.returncode == 0, scan.stderr
        wait_for(lambda: _settled(engine, notified), timeout=120, what="all notified")
        check_outcome(expected, outbox_by_guid(engine), sandbox.requests())

        r = redis.Redis.from_url(redis_url)
        try:
            entries = r.xrange("reauth:notifications")
        finally:
            r.close()
        ids = [json.loads(fields[b"payload"])["id"] for _, fields in entries]
        assert len(ids) == len(set(ids)) == notified

        calls_before = len(sandbox.requests())
        again = run_cli(env, "scan", "--json")
        assert again.returncode == 0, again.stderr
        wait_for(lambda: _scan_runs(engine) >= 2, timeout=60, what="second scan recorded")
        assert _settled(engine, notified)
        assert len(sandbox.requests()) == calls_before
    engine.dispose()


def _scan_runs(engine: object) -> int:
    from models import ScanRun

    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.scalar(select(func.count()).select_from(ScanRun)) or 0)


def test_sqlite_flow_with_scan_inline(
    sqlite_url: str, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """The same flow on SQLite through `reauth scan --inline` (no broker, no worker)."""
    engine = make_engine(sqlite_url)
    expected = populate(engine, 200, utc_now())
    env = reauth_env(
        db_url=sqlite_url,
        redis_url="",
        mx_base_url=sandbox.base_url,
        mx_sso_base_url=sandbox.sso_base_url,
        REAUTH_NOTIFY_SINK="file",
        REAUTH_NOTIFY_FILE=str(tmp_path / "out.jsonl"),
    )
    env.pop("REAUTH_BROKER_URL")
    env.pop("REAUTH_REDIS_URL")
    res = run_cli(env, "scan", "--inline", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["claimed"] == 200
    check_outcome(expected, outbox_by_guid(engine), sandbox.requests())
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == sum(k.notified for k in expected.values())
    again = run_cli(env, "scan", "--inline", "--json")
    assert json.loads(again.stdout)["claimed"] == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == len(lines)
    engine.dispose()
