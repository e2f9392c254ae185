"""Shared machinery of the reliability scenarios: environments, nudges, the invariant check.

The invariant every scenario ends with (see docs/RELIABILITY.md):

* every member who needs re-authentication has exactly one outbox row per (member, episode,
  reminder) with the right reason and parameters, and none who does not
  (:func:`tests.pipeline_helpers.check_outcome`, an oracle independent of the policy);
* every outbox row was delivered to the stream, under its own id, and the stream carries no
  message that is not an outbox row; a message appears twice only where the scenario crashed the
  relay between delivering and marking (at-least-once with a stable id);
* the database is consistent: no claim left after the leases, nothing pending, no partial batch
  (every success attempt has its outbox row and member state, every outbox row its success
  attempt, the URI on the member is the URI notified), attempts within REAUTH_MAX_ATTEMPTS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, func, select

from models import Attempt, Member, Notification
from tests.e2e.e2e_helpers import celery_process, free_port, kill_group, reauth_env, wait_for
from tests.pipeline_helpers import Kind, check_outcome, outbox_by_guid
from worker.app.celery_app import DELIVER_TASK, QUEUE, SCAN_TASK

STREAM = "reauth:notifications"

#: Short leases and fast retries so crashed work is retaken within seconds.
FAST = {
    "REAUTH_CLAIM_LEASE": "3s",
    "REAUTH_CLAIM_QUEUED_LEASE": "3s",
    "REAUTH_NOTIFY_LEASE": "3s",
    "REAUTH_CLAIM_HEARTBEAT": "1s",
    "REAUTH_VISIBILITY_TIMEOUT": "30",
    # A worker killed while creating a Nexus session leaves the creation lock for
    # 4 x MX timeout + 5 s, and other batches wait up to 1.5 x that for it: keep that below
    # the soft time limit (task limit - 10 s), or those batches die of SoftTimeLimitExceeded.
    "REAUTH_MX_TIMEOUT": "1",
    "REAUTH_TASK_TIME_LIMIT": "25",
    "REAUTH_BACKOFF_BASE": "1s",
    "REAUTH_BACKOFF_CAP": "2s",
    "REAUTH_BATCH_SIZE": "25",
}


def env_for(sandbox: Any, *, db_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return reauth_env(
        db_url=db_url,
        redis_url=redis_url,
        mx_base_url=sandbox.base_url,
        mx_sso_base_url=sandbox.sso_base_url,
        **{**FAST, **extra},
    )


# --- nudges: what beat would send -----------------------------------------------------------


class Nudger:
    """Publishes ``reauth.scan`` and ``reauth.dispatch_notifications`` like beat does."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        self.app = Celery("reauth-reliability-tests", broker=broker_url)

    def scan(self) -> None:
        self._send(SCAN_TASK, {"trigger": "test"})

    def dispatch(self) -> None:
        self._send(DELIVER_TASK, {})

    def _send(self, name: str, kwargs: dict[str, Any]) -> None:
        with self.app.connection_for_write() as conn:
            self.app.send_task(name, kwargs=kwargs, queue=QUEUE, connection=conn, retry=False)

    def close(self) -> None:
        self.app.close()


@contextmanager
def nudger(broker_url: str) -> Iterator[Nudger]:
    n = Nudger(broker_url)
    try:
        yield n
    finally:
        n.close()


# --- state ------------------------------------------------------------------------------------


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {
            "notes": int(c.scalar(select(func.count()).select_from(Notification)) or 0),
            "unsent": int(
                c.scalar(
                    select(func.count())
                    .select_from(Notification)
                    .where(Notification.status != "sent")
                )
                or 0
            ),
            "claimed": int(
                c.scalar(
                    select(func.count()).select_from(Member).where(Member.claim_owner.is_not(None))
                )
                or 0
            ),
            "pending": int(
                c.scalar(
                    select(func.count())
                    .select_from(Member)
                    .where(Member.reauth_state.in_(["pending", "gave_up"]))
                )
                or 0
            ),
            "attempts": int(c.scalar(select(func.count()).select_from(Attempt)) or 0),
        }


def settled(engine: Engine, expected: dict[str, Kind]) -> bool:
    """Everyone who needs it notified and delivered, nothing claimed or waiting to retry."""
    want = sum(k.notified for k in expected.values())
    n = counts(engine)
    return n["notes"] == want and n["unsent"] == 0 and n["claimed"] == 0 and n["pending"] == 0


def drive(
    nudge: Nudger,
    engine: Engine,
    expected: dict[str, Kind],
    *,
    timeout: float,
    every: float = 1.0,
) -> None:
    """Nudge scans and dispatches (like a fast beat) until the run has settled."""
    deadline = time.monotonic() + timeout
    while not settled(engine, expected):
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled after {timeout}s: {counts(engine)}")
        nudge.scan()
        nudge.dispatch()
        time.sleep(every)


def stream_ids(redis_url: str, stream: str = STREAM) -> list[str]:
    r = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(f[b"payload"])["id"] for _, f in r.xrange(stream)]
    finally:
        r.close()


# --- the invariant ------------------------------------------------------------------------------


def check_consistency(engine: Engine, *, max_attempts: int | None = None) -> None:
    """No partial batch is visible: attempts, member state and outbox agree row for row.

    Holds at every instant (also right after a crash), not only once the run has settled.
    """
    # One snapshot for all three reads: the check may run while a worker is still committing
    # batches, and under READ COMMITTED each statement would see a different moment.
    opts = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    with engine.connect().execution_options(**opts) as c:
        members = {m.id: m for m in c.execute(select(Member)).all()}
        notes = c.execute(select(Notification)).all()
        attempts = c.execute(select(Attempt)).all()
    success: Counter[tuple[int, int, int]] = Counter()
    tried: Counter[tuple[int, int, int]] = Counter()
    for a in attempts:
        key = (a.member_id, a.episode, a.reminder)
        if a.trigger == "refresh":
            continue
        tried[key] += 1
        if a.outcome == "success":
            success[key] += 1
    by_key: dict[tuple[int, int, int], Any] = {}
    for n in notes:
        key = (n.member_id, int(n.payload["episode"]), int(n.payload["reminder"]))
        m = members[n.member_id]
        assert n.idempotency_key == f"{m.member_guid}:{key[1]}:{key[2]}"
        assert key not in by_key, f"two outbox rows for {n.idempotency_key}"
        by_key[key] = n
        assert success[key] == 1, f"{n.idempotency_key}: {success[key]} success attempts"
        assert m.reauth_state in {"awaiting_user", "pending", "idle"}, (m.member_guid, m)
        assert m.reminders_sent >= key[2], m.member_guid
        assert m.episode >= key[1], m.member_guid
        if m.episode == key[1] and m.reminders_sent == key[2]:
            # The latest notification carries the URI stored on the member (same transaction).
            assert m.oauth_window_uri == n.payload["oauth_window_uri"], m.member_guid
    for key, k in success.items():
        assert k == 1, f"member {key}: {k} success attempts for one (episode, reminder)"
        assert key in by_key, f"member {key}: success attempt without its outbox row"
    if max_attempts is not None:
        over = {key: k for key, k in tried.items() if k > max_attempts}
        assert not over, f"more than {max_attempts} attempts: {over}"
        assert all(m.attempts <= max_attempts for m in members.values())


def check_invariant(
    engine: Engine,
    expected: dict[str, Kind],
    requests: list[dict[str, Any]],
    delivered: list[str],
    *,
    redelivery_allowed: bool = False,
    max_attempts: int | None = None,
) -> None:
    """The reliability promise, checked after a scenario has settled (see the module doc)."""
    check_outcome(expected, outbox_by_guid(engine), requests)
    check_consistency(engine, max_attempts=max_attempts)
    n = counts(engine)
    assert n["claimed"] == 0, "claims left after the leases"
    assert n["unsent"] == 0, "outbox rows not delivered"
    with engine.connect() as c:
        outbox = {
            str(i): g
            for i, g in c.execute(
                select(Notification.id, Member.member_guid).join(
                    Member, Member.id == Notification.member_id
                )
            )
        }
        states = dict(c.execute(select(Member.member_guid, Member.reauth_state)).all())
    assert set(delivered) == set(outbox), (
        f"lost: {len(set(outbox) - set(delivered))}, unknown: {len(set(delivered) - set(outbox))}"
    )
    if not redelivery_allowed:
        dupes = [i for i, k in Counter(delivered).items() if k > 1]
        assert not dupes, f"{len(dupes)} notifications delivered twice"
    for guid, k in expected.items():
        if k.marker == "NOOAUTH":
            assert states[guid] == "not_oauth_capable", guid
        elif k.marker == "GONE":
            assert states[guid] == "gone", guid
        elif k.notified:
            assert states[guid] == "awaiting_user", (guid, states[guid])
    per_member: defaultdict[str, set[str]] = defaultdict(set)
    for nid in delivered:
        per_member[outbox[nid]].add(nid)
    assert all(len(ids) == 1 for ids in per_member.values())


def oauth_calls(requests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The sandbox's OAuth-window requests per member guid, in arrival order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in requests:
        path = r.get("path", "")
        if path.endswith("/oauth_window_uri"):
            out[path.split("/members/")[1].split("/")[0]].append(r)
    return out


def tracebacks(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [
        line for line in text.splitlines() if "Traceback" in line or "raised unexpected" in line
    ]


# --- other processes ------------------------------------------------------------------------------


@contextmanager
def celery_beat(
    env: dict[str, str], *, schedule: Path, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``celery beat`` process with its own schedule file, for the block's duration."""
    with celery_process(
        env, ["beat", "-s", str(schedule)], log_path=log_path, stop_timeout=10
    ) as p:
        yield p


class RedisServer:
    """A throw-away ``redis-server`` on a loopback port: no persistence, like Celery's smoke."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.ping, timeout=10, what=f"redis-server on {self.port}")

    def ping(self) -> bool:
        r = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return bool(r.ping())
        except redis.RedisError:
            return False
        finally:
            r.close()

    def crash(self) -> None:
        """SIGKILL: whatever the server held (queues, unacked messages, stream) is gone."""
        if self.proc is not None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.crash()
        self.proc = None


__all__ = [
    "FAST",
    "Nudger",
    "RedisServer",
    "celery_beat",
    "check_consistency",
    "check_invariant",
    "counts",
    "drive",
    "env_for",
    "free_port",
    "kill_group",
    "nudger",
    "oauth_calls",
    "settled",
    "stream_ids",
    "tracebacks",
]
