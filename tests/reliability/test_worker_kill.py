"""Scenario 1: the worker's process group is SIGKILLed at each step; a new worker finishes.

A failpoint (worker/failpoints.py) freezes the worker at the named step and tells the test,
which then SIGKILLs the whole process group (pool children included), like ``docker kill``.
Recovery is the database's: claims run out after REAUTH_CLAIM_LEASE (3 s here), the next scan
retakes them, and the outbox relay redelivers rows whose notify lease ran out. Redis's own
redelivery of the unacked message (after REAUTH_VISIBILITY_TIMEOUT) is a bonus, tested once.
"""

# ruff: noqa: PLR0917  (pytest fixtures are positional parameters)

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from models import Member
from tests.e2e.e2e_helpers import celery_worker, kill_group, run_cli, wait_for
from tests.pipeline_helpers import populate
from tests.reliability.reliability_helpers import (
    celery_beat,
    check_consistency,
    check_invariant,
    counts,
    drive,
    env_for,
    nudger,
    oauth_calls,
    settled,
    stream_ids,
)
from worker.clock import utc_now
from worker.failpoints import POINTS
from worker.sandbox.config import SandboxConfig
from worker.sandbox.server import RunningSandbox, running_sandbox

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.redis,
]

MEMBERS = 112  # 8 of each kind; 5 batches of 25


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxConfig(latency=0.01)) as sb:
        yield sb


@pytest.mark.parametrize("point", POINTS)
def test_worker_killed_at_each_step_and_a_new_worker_finishes(
    point: str, pg_url: str, broker_url: str, sandbox: RunningSandbox, tmp_path: Path, engines: Any
) -> None:
    """SIGKILL of the worker's process group at ``point``: right then no partial batch is
    visible; after the leases a new worker plus a rescan finish the run, and every member who
    needs it has exactly one notification (a relay killed after delivering redelivers the same
    ids, nothing else)."""
    engine = engines(pg_url)
    expected = populate(engine, MEMBERS, utc_now())
    env = env_for(sandbox, db_url=pg_url, redis_url=broker_url)
    marker = tmp_path / "failpoint.hits"
    armed = {**env, "REAUTH_FAILPOINT": point, "REAUTH_FAILPOINT_FILE": str(marker)}

    with celery_worker(armed, log_path=tmp_path / "doomed.log", name="doomed") as doomed:
        scan = run_cli(env, "scan", "--json")
        assert scan.returncode == 0, scan.stderr
        wait_for(marker.exists, timeout=60, what=f"failpoint {point}")
        time.sleep(0.3)  # let the other pool child reach the point too, when it has work
        kill_group(doomed)

    # Frozen at the crash: whatever committed is whole, nothing half-written.
    check_consistency(engine)
    at_crash = counts(engine)
    if point in {"after_claim", "during_mx_calls", "after_mx_calls"}:
        assert at_crash["claimed"] > 0, "the crash should leave claims behind"

    with (
        celery_worker(env, log_path=tmp_path / "rescuer.log", name="rescuer"),
        nudger(broker_url) as nudge,
    ):
        time.sleep(3.2)  # the claim and notify leases (3 s) run out
        rescan = run_cli(env, "scan", "--json")
        assert rescan.returncode == 0, rescan.stderr
        drive(nudge, engine, expected, timeout=90)

    delivered = stream_ids(broker_url)
    check_invariant(
        engine,
        expected,
        sandbox.requests(),
        delivered,
        redelivery_allowed=point == "after_deliver",
    )
    if point == "after_deliver":
        # The crash came between XADD and mark-sent: those rows went out again, same ids.
        assert len(delivered) > len(set(delivered))
    if point in {"during_mx_calls", "after_mx_calls"}:
        # MX was asked again for the batch lost before its commit; still one notification.
        assert any(len(calls) > 1 for calls in oauth_calls(sandbox.requests()).values())


def test_killed_batch_is_redelivered_by_redis_without_a_rescan(
    pg_url: str, broker_url: str, sandbox: RunningSandbox, tmp_path: Path, engines: Any
) -> None:
    """The bonus path: with no rescan at all, Redis redelivers the killed worker's unacked
    batch after the visibility timeout (30 s), the claim is still that batch's, and the new
    worker completes it: same single notification per member."""
    engine = engines(pg_url)
    expected = populate(engine, 56, utc_now())
    env = env_for(sandbox, db_url=pg_url, redis_url=broker_url, REAUTH_BATCH_SIZE="100")
    marker = tmp_path / "failpoint.hits"
    armed = {**env, "REAUTH_FAILPOINT": "during_mx_calls", "REAUTH_FAILPOINT_FILE": str(marker)}

    with celery_worker(armed, log_path=tmp_path / "doomed.log", name="doomed") as doomed:
        assert run_cli(env, "scan").returncode == 0
        wait_for(marker.exists, timeout=60, what="failpoint during_mx_calls")
        kill_group(doomed)
    assert counts(engine)["notes"] == 0

    with (
        celery_worker(env, log_path=tmp_path / "rescuer.log", name="rescuer"),
        nudger(broker_url) as nudge,
    ):
        # No scan: only Redis's visibility timeout (30 s, checked every 10 s) brings it back.
        wait_for(
            lambda: counts(engine)["notes"] == sum(k.notified for k in expected.values()),
            timeout=75,
            interval=1,
            what="the unacked batch redelivered",
        )
        nudge.dispatch()
        wait_for(lambda: settled(engine, expected), timeout=30, what="delivered")
    check_invariant(engine, expected, sandbox.requests(), stream_ids(broker_url))


def _latest_claim_expiry(engine: Engine) -> Any:
    with engine.connect() as c:
        return c.scalar(select(func.max(Member.claim_expires_at)))


def test_killed_batch_is_retaken_within_45_s_by_the_claim_sweeper(
    pg_url: str,
    broker_url: str,
    sandbox: RunningSandbox,
    tmp_path: Path,
    engines: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Production leases and schedule: a 30 s claim renewed every 10 s by the batch's heartbeat
    (10 min while its page waits in the queue),
    beat with its 5-minute scan and the claim sweeper, Redis's visibility timeout at its 600 s
    default. The worker is SIGKILLed mid-batch right after a heartbeat (the worst moment); every
    member is notified and delivered at most 45 s after the kill (lease + one sweep + the
    work), and no member is notified twice."""
    engine = engines(pg_url)
    expected = populate(engine, 56, utc_now())
    env = env_for(
        sandbox,
        db_url=pg_url,
        redis_url=broker_url,
        REAUTH_CLAIM_LEASE="30s",
        REAUTH_CLAIM_QUEUED_LEASE="10m",
        REAUTH_NOTIFY_LEASE="30s",
        REAUTH_CLAIM_HEARTBEAT="10s",
        REAUTH_SCAN_INTERVAL="5m",
        REAUTH_VISIBILITY_TIMEOUT="600",
        REAUTH_BATCH_SIZE="100",
    )
    marker = tmp_path / "failpoint.hits"
    armed = {**env, "REAUTH_FAILPOINT": "during_mx_calls", "REAUTH_FAILPOINT_FILE": str(marker)}

    with celery_worker(armed, log_path=tmp_path / "doomed.log", name="doomed") as doomed:
        assert run_cli(env, "scan").returncode == 0
        wait_for(marker.exists, timeout=60, what="failpoint during_mx_calls")
        with (
            celery_worker(env, log_path=tmp_path / "rescuer.log", name="rescuer"),
            celery_beat(env, schedule=tmp_path / "beat-schedule", log_path=tmp_path / "beat.log"),
        ):
            # The batch is alive (frozen inside MX calls): its heartbeat keeps renewing.
            first = _latest_claim_expiry(engine)
            wait_for(
                lambda: _latest_claim_expiry(engine) > first,
                timeout=15,
                interval=0.05,
                what="a heartbeat renewing the batch's claims",
            )
            kill_group(doomed)
            killed = time.monotonic()
            assert counts(engine)["notes"] == 0
            wait_for(
                lambda: settled(engine, expected),
                timeout=90,
                interval=0.25,
                what="every member notified and delivered",
            )
            recovery = time.monotonic() - killed
    with capsys.disabled():
        print(f"\nrecovery after SIGKILL mid-batch: {recovery:.1f} s (lease 30 s, heartbeat 10 s)")
    check_invariant(engine, expected, sandbox.requests(), stream_ids(broker_url))
    assert recovery <= 45, f"members notified {recovery:.1f} s after the kill"
