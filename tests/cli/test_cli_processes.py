"""The documented commands as an operator runs them: separate processes, real ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.e2e.e2e_helpers import free_port
from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REAUTH_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_reauth_sandbox_serves_a_fresh_uri_to_curl_like_requests() -> None:
    """`reauth sandbox --port P` serves SSO → session → oauth_window_uri with MX's headers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "sandbox", "--port", str(port)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    http.get(f"{base}/_sandbox/config")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            token = http.get(
                f"{base}/sso/{DEFAULT_CLIENT_ID}/users/USR-1/api_token.json",
                headers={
                    "MD-API-KEY": DEFAULT_API_KEY,
                    "Accept": "application/vnd.moneydesktop.sso.v3+json",
                },
            ).json()["api_token"]["token"]
            nexus = "application/vnd.mx.nexus.v1+json"
            session = http.post(
                f"{base}/sessions",
                headers={"MD-API-TOKEN": token, "Accept": nexus, "Content-Type": nexus},
            ).json()["session"]["token"]
            headers = {"MD-SESSION-TOKEN": session, "Accept": nexus, "Content-Type": nexus}
            uris = [
                http.get(
                    f"{base}/members/MBR-1/oauth_window_uri",
                    params={"referral_source": "BROWSER", "skip_aggregation": "true"},
                    headers=headers,
                ).json()["member"]
                for _ in range(2)
            ]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert uris[0]["guid"] == "MBR-1"
    assert uris[0]["oauth_window_uri"].startswith("https://")
    assert uris[0]["oauth_window_uri"] != uris[1]["oauth_window_uri"]  # one-time URIs


def test_db_upgrade_creates_the_schema_on_sqlite_and_postgres(db_url: str, tmp_path: Path) -> None:
    """`reauth db downgrade base` then `reauth db upgrade` rebuild the schema on both databases."""
    env = _env(REAUTH_DATABASE_URL=db_url)
    for args in (("db", "downgrade", "base"), ("db", "upgrade"), ("db", "current", "--json")):
        proc = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    assert '"revision": "' in proc.stdout
