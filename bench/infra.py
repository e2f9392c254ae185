"""Benchmark plumbing: a throw-away PostgreSQL database, a Redis db, the sandbox and Celery workers
as subprocesses, fast seeding with COPY, and a sampler of a process tree's CPU time and peak
memory (RSS and PSS).

Everything binds or connects to loopback only. Every subprocess is started in its own session
(process group) and killed as a group on exit, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from worker.app.celery_app import EVENTS_QUEUE, QUEUES
from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

ROOT = Path(__file__).resolve().parents[1]
#: The server the benchmark database is created on (trust auth, user postgres).
PG_SERVER_URL = os.environ.get(
    "REAUTH_BENCH_PG_URL", "postgresql+psycopg://postgres@localhost/postgres"
)
#: Redis db of the benchmark (tests use 15; this is flushed at the start of every run).
REDIS_URL = os.environ.get("REAUTH_BENCH_REDIS_URL", "redis://localhost:6379/13")
#: The benchmark database (dropped and recreated): override to run beside another benchmark.
DB_NAME = os.environ.get("REAUTH_BENCH_DB", "reauth_bench")
CLIENT_ID = DEFAULT_CLIENT_ID
API_KEY = DEFAULT_API_KEY
STREAM = "reauth:notifications"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PostgreSQL -----------------------------------------------------------------------------------


def fresh_database(name: str = DB_NAME, *, migrate: bool = True) -> str:
    """Drop and recreate ``name`` on the server, migrate it; returns its URL."""
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    url = make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    if migrate:
        from worker.store.migrate import upgrade

        upgrade(url)
    return url


def drop_database(name: str = DB_NAME) -> None:
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def psycopg_dsn(url: str) -> str:
    """The libpq DSN of a SQLAlchemy URL (for raw psycopg COPY)."""
    u = make_url(url)
    return f"host={u.host or 'localhost'} user={u.username or 'postgres'} dbname={u.database}"


#: Columns written by :func:`seed_members`, in COPY order.
MEMBER_COLUMNS = (
    "member_guid",
    "user_guid",
    "institution_code",
    "is_oauth",
    "connection_status",
    "successfully_aggregated_at",
    "is_being_aggregated",
    "channel",
    "reauth_state",
    "episode",
    "reminders_sent",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
)


def seed_members(
    url: str,
    *,
    total: int,
    due: int,
    now: datetime,
    users: int,
    prefix: str = "MBR",
    due_due: bool = True,
    due_users: int | None = None,
) -> None:
    """COPY ``total`` members; ``due`` of them (spread evenly) are eligible and due now.

    Due members are OAuth members whose connection EXPIRED three days after their last
    aggregation: the policy's plainest path (reason ``expired``, ``skip_aggregation=false``), one
    MX call and one notification each. The rest are CONNECTED with ``next_attempt_at`` NULL, so
    they are outside the partial index ``ix_members_due``, as in production. With ``due_due``
    false the eligible members get ``next_attempt_at`` NULL too (the naive baseline picks them by
    id, so the pipeline's scan must not see them). Their due times are spread over the last hour
    so the keyset walk orders by a real column, not one repeated value. With ``due_users`` the
    due members belong to that many users of their own (``USR-D…``, consecutive members share
    one: ``due / due_users`` members per user), so the MX session count is set directly.
    """
    import psycopg

    stale = now - timedelta(days=3)
    step = total / due if due else 0
    due_at = {int(i * step) for i in range(due)} if due else set()
    with psycopg.connect(psycopg_dsn(url)) as conn, conn.cursor() as cur:
        cols = ", ".join(MEMBER_COLUMNS)
        with cur.copy(f"COPY members ({cols}) FROM STDIN") as copy:
            due_seen = 0
            for i in range(total):
                is_due = i in due_at
                user = f"USR-{i % users:06d}"
                if is_due and due_users:
                    user = f"USR-D{due_seen * due_users // due:06d}"
                due_seen += is_due
                when = now - timedelta(seconds=(i % 3600)) if is_due and due_due else None
                copy.write_row(
                    (
                        f"{prefix}-{i:08d}",
                        user,
                        ("chase", "mx_bank")[i % 2],
                        True,
                        "EXPIRED" if is_due else "CONNECTED",
                        stale,
                        False,
                        "BROWSER",
                        "idle",
                        0,
                        0,
                        0,
                        when,
                        now,
                        now,
                    )
                )
        conn.commit()
        # Fresh statistics and visibility map: the planner must see the table as it is, not as
        # it was empty, as autovacuum would have it in production (index-only scans need it).
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE members")


def reset_tables(url: str) -> None:
    """Empty every table of the service (between runs), keeping the schema."""
    import models

    engine = create_engine(url)
    tables = ", ".join(t.name for t in models.Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


def scalar(url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


# --- Redis ----------------------------------------------------------------------------------------


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def flush_redis() -> None:
    r = redis_client()
    try:
        r.flushdb()
    finally:
        r.close()


# --- subprocesses ---------------------------------------------------------------------------------


def _popen(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 15) -> None:
    """SIGTERM the process, then SIGKILL its whole group (prefork children included)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class Sandbox:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure(self, **changes: Any) -> None:
        """Change the running sandbox (e.g. ``latency``) through its admin endpoint."""
        r = httpx.put(f"{self.base_url}/_sandbox/config", json=changes, timeout=5)
        r.raise_for_status()

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.base_url}/_sandbox/stats", timeout=5).json())

    def clear_log(self) -> None:
        # The request log is bounded, but clearing it keeps the sandbox's memory flat per run.
        httpx.delete(f"{self.base_url}/_sandbox/requests", timeout=30)


@contextlib.contextmanager
def sandbox_process(latency: float, log: Path) -> Iterator[Sandbox]:
    """``reauth sandbox`` in its own process, so it does not share the client's CPU time."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [
        sys.executable,
        "-m",
        "worker",
        "sandbox",
        "--port",
        str(port),
        "--latency",
        str(latency),
    ]
    proc = _popen(args, env, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_sandbox/stats", timeout=0.5)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the sandbox did not start; see {log}") from None
                time.sleep(0.1)
        yield Sandbox(proc, port)
    finally:
        stop(proc)


def reauth_env(db_url: str, sandbox: Sandbox, **extra: str) -> dict[str, str]:
    """Environment of the pipeline's worker: PostgreSQL, Redis db 13, the sandbox (Nexus).

    The MX rate limit is raised far above the load (REAUTH_MX_RATE_LIMIT_PER_SECOND=100000):
    the benchmark measures the pipeline, not the 200/s budget the default protects.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REAUTH_")}
    env.update(
        {
            "REAUTH_DATABASE_URL": db_url,
            "REAUTH_BROKER_URL": REDIS_URL,
            "REAUTH_REDIS_URL": REDIS_URL,
            "REAUTH_MX_API": "nexus",
            "REAUTH_MX_BASE_URL": sandbox.base_url,
            "REAUTH_MX_SSO_BASE_URL": f"{sandbox.base_url}/sso",
            "REAUTH_ALLOW_INSECURE_URLS": "true",  # the sandbox serves plain http
            "REAUTH_MX_CLIENT_ID": CLIENT_ID,
            "REAUTH_MX_API_KEY": API_KEY,
            "REAUTH_MX_RATE_LIMIT_PER_SECOND": "100000",
            "REAUTH_MX_TIMEOUT": "30",
            "REAUTH_NOTIFY_SINK": "redis-stream",
            "REAUTH_NOTIFY_STREAM": STREAM,
            "REAUTH_LOG_FORMAT": "json",
            # REAUTH_BENCH_LOG_LEVEL=INFO: the per-batch lines with their timings, for a look.
            "REAUTH_LOG_LEVEL": os.environ.get("REAUTH_BENCH_LOG_LEVEL", "WARNING"),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def celery_worker(
    env: dict[str, str],
    *,
    app: str,
    queue: str | None,
    concurrency: int,
    log: Path,
    name: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """A prefork Celery worker (``celery -A app worker``) for the duration of the block;
    ``queue`` None consumes every queue the app declares."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        *(["-Q", queue] if queue else []),
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "WARNING",
    ]
    proc = _popen(args, env, log)
    try:
        yield proc
    finally:
        stop(proc)


def wait_pool_ready(proc: subprocess.Popen[bytes], concurrency: int, timeout: float = 60) -> None:
    """Wait until the prefork pool has all its children (the worker consumes from then on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the Celery worker exited during start-up")
        with contextlib.suppress(psutil.Error):
            if len(psutil.Process(proc.pid).children(recursive=True)) >= concurrency:
                return
        time.sleep(0.1)
    raise RuntimeError("the Celery worker's pool did not start")


@contextlib.contextmanager
def reauth_workers(
    env: dict[str, str],
    *,
    processes: int,
    logs: Path,
    name: str,
    main_queue: str | None = None,
    events_worker: bool = True,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Workers ready to consume: the main worker (every queue unless ``main_queue``, events
    first; ``processes`` pool processes) and, with ``events_worker``, a dedicated events worker
    (``-Q reauth.events -c 1``). Yields them; measure every tree (:class:`PeakRss` takes
    several roots)."""
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                celery_worker(
                    env, app="worker.celery_app", queue=main_queue, concurrency=processes,
                    log=logs / f"{name}.log", name=name,
                )
            )
        ]  # fmt: skip
        if events_worker:
            workers.append(
                stack.enter_context(
                    celery_worker(
                        env, app="worker.celery_app", queue=EVENTS_QUEUE, concurrency=1,
                        log=logs / f"{name}-events.log", name=f"{name}-events",
                    )
                )
            )  # fmt: skip
        for worker, pool in zip(workers, (processes, 1), strict=False):
            wait_pool_ready(worker, pool)
        yield workers


def wait_queue_empty(queue: str | None = None, timeout: float = 60) -> None:
    """Until the broker list (every queue of the app if None) and kombu's unacked set are
    empty (acks_late: acked when done)."""
    names = [queue] if queue else list(QUEUES)
    r = redis_client()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(r.llen(q) == 0 for q in names) and r.hlen("unacked") == 0:
                return
            time.sleep(0.05)
    finally:
        r.close()
    raise RuntimeError(f"queue {queue} did not drain in {timeout}s")


def _pss_bytes(pid: int) -> int:
    """Proportional set size of one process (``Pss:`` of /proc/<pid>/smaps_rollup), in bytes.

    smaps_rollup is one summed record per process, far cheaper than psutil's full smaps walk;
    0 where the file is missing (not Linux, or the process just exited).
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples processes and all their descendants on a thread: peak RSS, peak PSS, CPU time.

    Memory: the RSS sum counts pages a prefork parent shares with its children once per
    process; PSS splits every shared page between the processes mapping it, so its sum is the
    tree's real footprint (the figure the issue judges). CPU: the last seen user + system time
    of every process ever seen in the tree, minus what it had when the block began, so a pool
    child that exits or is replaced mid-run still counts. :meth:`__exit__` takes a final sample,
    so end the block before the worker is stopped.
    """

    def __init__(self, pid: int, *more: int, interval: float = 0.1, pss_every: int = 5) -> None:
        self._pid = pid
        # Every root's tree counts (the main worker and the events worker).
        self._roots = (pid, *more)
        self._interval = interval
        # PSS reads /proc/<pid>/smaps_rollup, dearer than RSS: every pss_every samples.
        self._pss_every = pss_every
        self.peak = 0
        self.peak_pss = 0
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _tree(self) -> list[psutil.Process]:
        out = []
        for pid in self._roots:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        return out

    def _sample(self, pss: bool) -> None:
        rss = total_pss = 0
        cpu: dict[int, float] = {}
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
                if pss:
                    total_pss += _pss_bytes(p.pid)
        with self._lock:
            self.peak = max(self.peak, rss)
            self.peak_pss = max(self.peak_pss, total_pss)
            first = not self._cpu_last
            for pid, used in cpu.items():
                self._cpu_start.setdefault(pid, used if first else 0.0)
                self._cpu_last[pid] = used

    def _run(self) -> None:
        n = 1
        while not self._stop.wait(self._interval):
            with contextlib.suppress(psutil.Error):
                self._sample(pss=n % self._pss_every == 0)
            n += 1

    def __enter__(self) -> PeakRss:
        # The first sample is the CPU baseline (start-up and warm-up are not counted); a
        # process that appears later counts from zero.
        self._sample(pss=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(psutil.Error):
            self._sample(pss=True)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)

    @property
    def peak_pss_mb(self) -> float:
        return round(self.peak_pss / 2**20, 1)

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) the tree used inside the block."""
        with self._lock:
            return sum(used - self._cpu_start[pid] for pid, used in self._cpu_last.items())


def wait_stream(
    stream: str, expected: int, *, timeout: float, interval: float = 0.02
) -> tuple[int, float]:
    """Poll XLEN until it reaches ``expected``; returns (length, perf_counter when reached).

    Bounded by ``timeout``: a run that stalls returns what it got, and the caller reports it.
    """
    r = redis_client()
    try:
        deadline = time.perf_counter() + timeout
        n = 0
        while time.perf_counter() < deadline:
            n = int(r.xlen(stream))
            if n >= expected:
                return n, time.perf_counter()
            time.sleep(interval)
        return n, time.perf_counter()
    finally:
        r.close()


def environment(db_url: str, *, packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The machine and service versions a benchmark ran on (and ``packages``' versions)."""
    import importlib.metadata as md
    import platform

    import psutil

    r = redis_client()
    try:
        redis_version = r.info("server")["redis_version"]
    finally:
        r.close()
    env: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": scalar(db_url, "SHOW server_version"),
        "redis": redis_version,
    }
    for name in packages:
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    return env
