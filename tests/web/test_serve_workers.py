"""``reauth serve --workers N``: N processes on one port, each with its own runtime, under one
supervisor that also runs the ops listener and /metrics (the processes' sum); SIGTERM stops them
all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.e2e_helpers import free_port, wait_until_answering
from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "oncall", "correct horse battery"


def _env(db_url: str, public: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REAUTH_", "PROMETHEUS_"))}
    env.update(
        PYTHONPATH=str(ROOT), REAUTH_DATABASE_URL=db_url,
        REAUTH_PUBLIC_URL=f"http://127.0.0.1:{public}", REAUTH_RECONNECT_SECRETS="s" * 40,
        REAUTH_ALLOW_INSECURE_URLS="true", REAUTH_MX_CLIENT_ID=DEFAULT_CLIENT_ID,
        REAUTH_MX_API_KEY=DEFAULT_API_KEY, **extra,
    )  # fmt: skip
    return env


def _serve(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "serve", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
def test_workers_share_the_port_and_all_stop_on_sigterm(sqlite_url: str) -> None:
    public, ops, metrics = free_port(), free_port(), free_port()
    env = _env(
        sqlite_url, public, REAUTH_METRICS_PORT=str(metrics),
        REAUTH_OPS_PORT=str(ops), REAUTH_OPS_USERNAME=USER, REAUTH_OPS_PASSWORD=PASSWORD,
    )  # fmt: skip
    proc = _serve(env, "--port", str(public), "--workers", "2")
    try:
        with httpx.Client(timeout=5) as http:
            wait_until_answering(
                proc,
                http,
                f"http://127.0.0.1:{public}/healthz",
                f"http://127.0.0.1:{ops}/ops/report",
                timeout=60,
            )
            children = psutil.Process(proc.pid).children()
            # Each answer reads the database in whichever process accepted the connection.
            close = {"Connection": "close"}  # a new connection each: either process may take it
            pages = [
                http.get(f"http://127.0.0.1:{public}/r/not-a-token", headers=close)
                for _ in range(6)
            ]
            # Presses on a link that does not exist: counted by whichever process answered.
            presses = [
                http.post(f"http://127.0.0.1:{public}/r/bad", headers=close) for _ in range(8)
            ]
            counted = http.get(f"http://127.0.0.1:{metrics}/metrics").text
            on_ops = http.get(
                f"http://127.0.0.1:{ops}/ops/report", auth=httpx.BasicAuth(USER, PASSWORD)
            )
        servers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(servers) == 2, [c.cmdline() for c in children]
        assert {p.status_code for p in pages} == {404}
        for p in pages:
            assert p.headers["cache-control"] == "no-store"
            assert p.headers["referrer-policy"] == "no-referrer"
            assert "default-src 'none'" in p.headers["content-security-policy"]
        assert on_ops.status_code == 200
        assert {p.status_code for p in presses} == {404}
        # The supervisor answered no press itself: /metrics shows what the server processes
        # counted (in the multiprocess directory), all eight.
        assert 'reauth_reconnect_clicks_total{outcome="not_found"} 8.0' in counted
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, stderr = proc.communicate(timeout=5)
        assert b"Traceback" not in stderr, stderr.decode()
        for child in servers:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_workers_must_be_at_least_one(sqlite_url: str) -> None:
    proc = _serve(_env(sqlite_url, 8080), "--workers", "0")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert b"--workers" in stderr
