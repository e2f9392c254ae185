"""Real Celery worker processes for end-to-end and reliability tests.

Workers are started as ``celery -A worker.celery_app worker`` subprocesses with the project's
settings in their environment (no eager mode), against the real Redis broker and PostgreSQL; the
MX sandbox runs in the test process on a loopback port they can reach.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reauth_env(
    *, db_url: str, redis_url: str, mx_base_url: str, mx_sso_base_url: str, **extra: str
) -> dict[str, str]:
    """Environment for a worker or CLI subprocess."""
    from tests.pipeline_helpers import REDIRECT, SCHEME
    from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

    env = {k: v for k, v in os.environ.items() if not k.startswith("REAUTH_")}
    env.update(
        {
            "REAUTH_DATABASE_URL": db_url,
            "REAUTH_BROKER_URL": redis_url,
            "REAUTH_REDIS_URL": redis_url,
            "REAUTH_MX_BASE_URL": mx_base_url,
            "REAUTH_MX_SSO_BASE_URL": mx_sso_base_url,
            "REAUTH_ALLOW_INSECURE_URLS": "true",  # the sandbox serves plain http on loopback
            "REAUTH_MX_CLIENT_ID": DEFAULT_CLIENT_ID,
            "REAUTH_MX_API_KEY": DEFAULT_API_KEY,
            "REAUTH_APP_REDIRECT_URL": REDIRECT,
            "REAUTH_APP_URL_SCHEME": SCHEME,
            "REAUTH_ALLOWED_REDIRECT_PREFIXES": REDIRECT,
            "REAUTH_NOTIFY_SINK": "redis-stream",
            "REAUTH_LOG_FORMAT": "json",
            "REAUTH_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


@contextmanager
def celery_worker(
    env: dict[str, str], *, concurrency: int = 2, log_path: Path, name: str = "w1"
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker process for the duration of the block (stopped with SIGTERM, then KILL)."""
    with celery_process(
        env,
        [
            "worker",
            "-c",
            str(concurrency),
            "-P",
            "prefork",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        log_path=log_path,
    ) as proc:
        yield proc


@contextmanager
def celery_process(
    env: dict[str, str], argv: list[str], *, log_path: Path, stop_timeout: float = 20
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A worker.celery_app <argv>`` in its own process group, logging to ``log_path``."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        *argv,
        "--loglevel",
        "WARNING",
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop(proc, timeout=stop_timeout)


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 20) -> None:
    """Warm shutdown, then kill the whole process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
    kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its pool children (they share the process group)."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last!r}")


def wait_until_answering(
    proc: subprocess.Popen[Any], http: httpx.Client, *urls: str, timeout: float
) -> None:
    """Wait until a server we started answers every URL (any status), failing at once if it
    exited and after ``timeout`` seconds if it never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            for url in urls:
                http.get(url)
            return
        except httpx.TransportError:
            assert proc.poll() is None, f"the server exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"the server did not answer within {timeout}s"
            time.sleep(0.2)
