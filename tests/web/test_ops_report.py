"""The ops listener: GET /ops/report behind Basic auth on its own socket, never on the public
port, with the public pages' security headers on every answer."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.funnel_helpers import seed
from tests.pipeline_helpers import make_settings
from worker.clock import utc_now
from worker.config import load_settings
from worker.errors import ConfigError
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.serving import serve_in_thread
from worker.web.app import create_app
from worker.web.ops import create_ops_app

USER, PASSWORD = "oncall", "correct horse battery"


@dataclass
class Listeners:
    public: str
    ops: str


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def listeners(db_url: str, sandbox: RunningSandbox) -> Iterator[Listeners]:
    settings = make_settings(
        db_url, sandbox, public_url="http://127.0.0.1:1", reconnect_secrets=["s" * 40],
        ops_port=1, ops_username=USER, ops_password=PASSWORD,
    )  # fmt: skip
    rt = Runtime(settings)
    try:
        seed(rt.engine, utc_now())
        with (
            serve_in_thread(create_app(rt), name="public") as public,
            serve_in_thread(create_ops_app(rt), name="ops", lifespan="off") as ops,
        ):
            yield Listeners(f"http://127.0.0.1:{public}", f"http://127.0.0.1:{ops}")
    finally:
        rt.close()


def _secure(r: httpx.Response) -> None:
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_ops_report_needs_the_right_credentials(listeners: Listeners) -> None:
    url = f"{listeners.ops}/ops/report"
    for headers in ({}, _basic(USER, "wrong password!"), _basic("root", PASSWORD),
                    {"Authorization": "Basic %%%"}, {"Authorization": "Bearer x"}):  # fmt: skip
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Basic realm="reauth ops"')
        _secure(r)
        assert "Funnel" not in r.text
    r = httpx.get(url, headers=_basic(USER, PASSWORD))
    assert r.status_code == 200
    _secure(r)
    nonce = r.headers["content-security-policy"].split("style-src 'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">' in r.text
    assert "Re-authentication funnel" in r.text
    assert "&lt;b&gt;bad&amp;bank&lt;/b&gt;" in r.text
    by = httpx.get(url, params={"by": "institution", "since": "7d"}, headers=_basic(USER, PASSWORD))
    assert by.status_code == 200
    assert "By institution" in by.text
    bad = httpx.get(url, params={"by": "<bank>"}, headers=_basic(USER, PASSWORD))
    assert bad.status_code == 400
    assert "--by &#x27;&lt;bank&gt;&#x27;" in bad.text
    _secure(bad)
    other = httpx.get(f"{listeners.ops}/r/anything", headers=_basic(USER, PASSWORD))
    assert other.status_code == 404
    _secure(other)


def test_ops_report_is_not_on_the_public_port(listeners: Listeners) -> None:
    r = httpx.get(f"{listeners.public}/ops/report", headers=_basic(USER, PASSWORD))
    assert r.status_code == 404
    assert "Funnel" not in r.text


def test_the_ops_listener_is_off_unless_port_and_both_credentials_are_set() -> None:
    assert not load_settings(ops_port=9100).ops_enabled
    assert not load_settings(ops_username=USER, ops_password=PASSWORD).ops_enabled
    on = load_settings(ops_port=9100, ops_username=USER, ops_password=PASSWORD)
    assert on.ops_enabled
    assert on.ops_host == "127.0.0.1"
    with pytest.raises(ConfigError, match="REAUTH_OPS_USERNAME and REAUTH_OPS_PASSWORD"):
        load_settings(ops_port=9100, ops_username=USER)
    with pytest.raises(ConfigError, match="REAUTH_OPS_PASSWORD: at least 12"):
        load_settings(ops_username=USER, ops_password="short")


@pytest.mark.slow
def test_reauth_serve_runs_both_listeners_and_stops_both(sqlite_url: str) -> None:
    """`reauth serve` with REAUTH_OPS_*: the public port has no /ops/report, the ops port has
    it behind Basic auth; SIGTERM stops the process (both servers)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.e2e.e2e_helpers import free_port, wait_until_answering
    from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

    root = Path(__file__).resolve().parents[2]
    public, ops = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REAUTH_")}
    env.update(
        PYTHONPATH=str(root), REAUTH_DATABASE_URL=sqlite_url,
        REAUTH_PUBLIC_URL=f"http://127.0.0.1:{public}", REAUTH_RECONNECT_SECRETS="s" * 40,
        REAUTH_ALLOW_INSECURE_URLS="true", REAUTH_MX_CLIENT_ID=DEFAULT_CLIENT_ID,
        REAUTH_MX_API_KEY=DEFAULT_API_KEY, REAUTH_OPS_PORT=str(ops),
        REAUTH_OPS_USERNAME=USER, REAUTH_OPS_PASSWORD=PASSWORD,
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "serve", "--port", str(public)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with httpx.Client(timeout=5) as http:
            wait_until_answering(
                proc,
                http,
                f"http://127.0.0.1:{public}/healthz",
                f"http://127.0.0.1:{ops}/ops/report",
                timeout=30,
            )
            auth = _basic(USER, PASSWORD)
            on_public = http.get(f"http://127.0.0.1:{public}/ops/report", headers=auth)
            denied = http.get(f"http://127.0.0.1:{ops}/ops/report")
            page = http.get(f"http://127.0.0.1:{ops}/ops/report", headers=auth)
        assert on_public.status_code == 404
        assert denied.status_code == 401
        assert page.status_code == 200
        assert "Re-authentication funnel" in page.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
