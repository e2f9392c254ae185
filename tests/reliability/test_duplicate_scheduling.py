"""Scenario 2: two ``celery beat`` processes and manual scans fire at the same moment.

Running one beat is an operational rule that will be broken some day (a deploy overlapping the
old pod, a second host started by mistake). The scan must not care: the PostgreSQL advisory
lock makes a second concurrent scan return at once, and claims are exclusive anyway.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.e2e_helpers import ROOT, celery_worker, run_cli, wait_for
from tests.pipeline_helpers import populate
from tests.reliability.reliability_helpers import (
    celery_beat,
    check_invariant,
    env_for,
    oauth_calls,
    settled,
    stream_ids,
    tracebacks,
)
from worker.clock import utc_now
from worker.sandbox.config import SandboxConfig
from worker.sandbox.server import RunningSandbox, running_sandbox

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.redis,
]


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxConfig(latency=0.02)) as sb:
        yield sb


def test_two_beats_and_manual_scans_process_each_member_once(
    pg_url: str, broker_url: str, sandbox: RunningSandbox, tmp_path: Path, engines: Any
) -> None:
    """Two beats ticking every second, ``reauth scan`` (enqueued) and ``reauth scan --inline``
    (its own process, batches run in the CLI) started together: MX is asked exactly once per
    member, every eligible member gets exactly one notification, and nothing is delivered
    twice."""
    engine = engines(pg_url)
    expected = populate(engine, 210, utc_now())
    env = env_for(sandbox, db_url=pg_url, redis_url=broker_url, REAUTH_SCAN_INTERVAL="1s")
    with (
        celery_worker(env, log_path=tmp_path / "worker.log", concurrency=2),
        celery_beat(env, schedule=tmp_path / "beat-a", log_path=tmp_path / "beat-a.log"),
        celery_beat(env, schedule=tmp_path / "beat-b", log_path=tmp_path / "beat-b.log"),
    ):
        manual = [
            subprocess.Popen(
                [sys.executable, "-m", "worker", "scan", *extra, "--json"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for extra in ([], ["--inline"])
        ]
        for proc in manual:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        wait_for(lambda: settled(engine, expected), timeout=90, what="settled")
        # More ticks while settled: they find nothing due and ask MX nothing.
        calls_before, runs = len(sandbox.requests()), _scan_runs(engine)
        wait_for(lambda: _scan_runs(engine) >= runs + 2, timeout=30, what="scans after")
        assert len(sandbox.requests()) == calls_before

    calls = oauth_calls(sandbox.requests())
    for guid, kind in expected.items():
        asked = len(calls.get(guid, []))
        if kind.notified or kind.marker:
            assert asked == 1, f"{guid} ({kind.name}): MX asked {asked} times"
        else:
            assert asked == 0, f"{guid} ({kind.name}) is not eligible, MX asked {asked} times"
    check_invariant(engine, expected, sandbox.requests(), stream_ids(broker_url))
    assert not tracebacks(tmp_path / "worker.log")
    again = run_cli(env, "status", "--json")
    assert again.returncode == 0, again.stderr


def _scan_runs(engine: object) -> int:
    from sqlalchemy import func, select

    from models import ScanRun

    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.scalar(select(func.count()).select_from(ScanRun)) or 0)
