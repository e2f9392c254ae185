"""Scenario 7: the full pipeline at DEBUG leaks no secret, and the redirect allow-list holds.

Secrets: the MX API key (and its HTTP Basic form), every SSO API token and Nexus session token
the sandbox issued (its token generator is wrapped to record them all), and every
oauth_window_uri with its token. None may appear in a log line (the worker's log file at DEBUG,
and an in-process run with every library logger at DEBUG) or in exception text kept in the
database.
"""

# ruff: noqa: PLR0917  (pytest fixtures are positional parameters)

from __future__ import annotations

import base64
import io
import logging
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import select

from models import Attempt, Member, Notification
from tests.e2e.e2e_helpers import celery_worker, run_cli
from tests.pipeline_helpers import REDIRECT, populate
from tests.reliability.reliability_helpers import drive, env_for, nudger, settled
from worker.clock import utc_now
from worker.config import load_settings, redirect_allowed
from worker.errors import ConfigError
from worker.logging import configure_logging
from worker.sandbox.config import DEFAULT_CLIENT_ID, SandboxConfig
from worker.sandbox.server import RunningSandbox, running_sandbox

pytestmark = [pytest.mark.reliability]

API_KEY = f"sk-live-{secrets.token_hex(12)}"
LIBRARY_LOGGERS = ("httpx", "httpcore", "aiohttp", "redis", "hpack", "celery", "kombu")


@pytest.fixture
def sandbox() -> Iterator[tuple[RunningSandbox, list[str]]]:
    """A sandbox with some faults (so error paths log too) that records every token it issues."""
    config = SandboxConfig(
        api_key=API_KEY,
        latency=0.005,
        rate_500=0.05,
        rate_429=0.05,
        expire_session_every=5,
        seed=3,
    )
    issued: list[str] = []
    with running_sandbox(config) as sb:
        original = sb.sandbox._new_token

        def recording() -> str:
            token = original()
            issued.append(token)
            return token

        sb.sandbox._new_token = recording  # type: ignore[method-assign]
        yield sb, issued


def _secrets(issued: list[str], engine: Any) -> list[str]:
    with engine.connect() as c:
        uris = [p["oauth_window_uri"] for p in c.scalars(select(Notification.payload))]
        uris += [u for u in c.scalars(select(Member.oauth_window_uri)) if u]
    basic = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{API_KEY}".encode()).decode()
    assert issued
    assert uris
    return [API_KEY, basic, *issued, *uris]


def _db_texts(engine: Any) -> list[str]:
    with engine.connect() as c:
        texts = [t for t in c.scalars(select(Attempt.error_message)) if t]
        texts += [t for t in c.scalars(select(Member.last_error)) if t]
        texts += [t for t in c.scalars(select(Notification.last_error)) if t]
    return texts


def _assert_clean(where: str, text: str, secret_values: list[str]) -> None:
    leaked = [s for s in secret_values if s in text]
    assert not leaked, f"{len(leaked)} secret(s) in {where}, e.g. ...{leaked[0][-12:]}"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_worker_at_debug_logs_no_secret(
    pg_url: str,
    broker_url: str,
    sandbox: tuple[RunningSandbox, list[str]],
    tmp_path: Path,
    engines: Any,
) -> None:
    """A real worker at REAUTH_LOG_LEVEL=DEBUG runs the whole pipeline (sessions, expiries,
    5xx and 429 retries, delivery): its log file holds none of the secrets, nor does any
    error text the database keeps."""
    sb, issued = sandbox
    engine = engines(pg_url)
    expected = populate(engine, 56, utc_now())
    env = env_for(
        sb,
        db_url=pg_url,
        redis_url=broker_url,
        REAUTH_LOG_LEVEL="DEBUG",
        REAUTH_MX_API_KEY=API_KEY,
    )
    log = tmp_path / "worker.log"
    with celery_worker(env, log_path=log), nudger(broker_url) as nudge:
        assert run_cli(env, "scan").returncode == 0
        drive(nudge, engine, expected, timeout=90)
    text = log.read_text(errors="replace")
    assert '"level": "debug"' in text, "DEBUG logging was not on"
    assert "mx.http" in text
    found = _secrets(issued, engine)
    _assert_clean("the worker log", text, found)
    _assert_clean("error texts in the database", "\n".join(_db_texts(engine)), found)


@pytest.fixture
def debug_capture(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The service's logging at DEBUG into a buffer, library loggers included; restored."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_level = root.level
    saved = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    configure_logging(fmt="json", level="DEBUG", stream=stream)
    structlog.configure(cache_logger_on_first_use=False)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield stream
    root.handlers = [h for h in root.handlers if h.get_name() != "reauth"]
    root.setLevel(saved_level)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


@pytest.mark.parametrize("api", ["nexus", "platform"])
def test_in_process_pipeline_at_debug_logs_no_secret(
    api: str,
    sqlite_url: str,
    sandbox: tuple[RunningSandbox, list[str]],
    debug_capture: io.StringIO,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    engines: Any,
) -> None:
    """Scan, regenerate and deliver in this process (both MX APIs, every library logger at
    DEBUG): neither the rendered log nor the raw log records hold a secret."""
    from worker.runtime import Runtime
    from worker.service.deliver import deliver
    from worker.service.regenerate import regenerate_batch
    from worker.service.scan import run_scan

    sb, issued = sandbox
    engine = engines(sqlite_url)
    expected = populate(engine, 42, utc_now())
    settings = load_settings(
        database_url=sqlite_url,
        mx_api=api,
        mx_base_url=sb.base_url,
        mx_sso_base_url=sb.sso_base_url,
        mx_client_id=DEFAULT_CLIENT_ID,
        mx_api_key=API_KEY,
        app_redirect_url=REDIRECT,
        allowed_redirect_prefixes=[REDIRECT],
        notify_sink="file",
        notify_file=str(tmp_path / "out.jsonl"),
        backoff_base=timedelta(seconds=1),
        backoff_cap=timedelta(seconds=2),
        allow_insecure_urls=True,
    )
    rt = Runtime(settings)
    offset = timedelta(0)

    def clock() -> Any:
        return utc_now() + offset

    try:
        for _ in range(12):  # each round jumps past the retry backoff
            run_scan(
                rt, lambda ids, owner: regenerate_batch(rt, ids, owner, clock=clock), clock=clock
            )
            deliver(rt, clock=clock, owner="relay")
            if settled(engine, expected):
                break
            offset += timedelta(seconds=10)
        assert settled(engine, expected)
    finally:
        rt.close()
    found = _secrets(issued, engine)
    _assert_clean("the rendered log", debug_capture.getvalue(), found)
    records = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    _assert_clean("the raw log records", records, found)
    _assert_clean("error texts in the database", "\n".join(_db_texts(engine)), found)
    assert API_KEY not in repr(settings)


# --- the redirect allow-list --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefixes", "url"),
    [
        ("https://app.example.com/oauth/", "https://evil.example.net/oauth/complete"),
        ("https://app.example.com", "https://app.example.com.evil.net/cb"),
        ("https://app.example.com", "https://app.example.com@evil.net/cb"),
        ("https://app.example.com/oauth", "https://app.example.com/oauthz/../steal"),
        ("", "https://app.example.com/oauth/complete"),
    ],
)
def test_redirect_outside_the_allow_list_is_refused_when_config_loads(
    prefixes: str, url: str, sqlite_url: str
) -> None:
    """``REAUTH_APP_REDIRECT_URL`` not under an allow-listed prefix (matched at a URL boundary,
    so look-alike hosts and userinfo tricks fail): ``reauth status`` exits 2 with one clear
    message, and loading the settings in process raises ConfigError."""
    env = {
        "REAUTH_DATABASE_URL": sqlite_url,
        "REAUTH_APP_REDIRECT_URL": url,
        "REAUTH_ALLOWED_REDIRECT_PREFIXES": prefixes,
    }
    res = run_cli({**_clean_env(), **env}, "status")
    text = res.stdout + res.stderr
    assert res.returncode == 2, text
    assert "REAUTH_APP_REDIRECT_URL" in text
    assert "Traceback" not in text
    # "allow-listed", or refused even before matching (user information in the URL).
    with pytest.raises(ConfigError, match="REAUTH_APP_REDIRECT_URL"):
        load_settings(
            app_redirect_url=url,
            allowed_redirect_prefixes=[p for p in prefixes.split(",") if p],
        )


def test_redirect_allow_list_matches_at_url_boundaries() -> None:
    prefixes = ["https://app.example.com", "exampleapp://", "https://b.example/cb?"]
    assert redirect_allowed("https://app.example.com", prefixes)
    assert redirect_allowed("https://app.example.com/oauth/complete", prefixes)
    assert redirect_allowed("https://app.example.com?x=1", prefixes)
    assert redirect_allowed("exampleapp://done", prefixes)
    assert redirect_allowed("https://b.example/cb?state=1", prefixes)
    assert not redirect_allowed("https://app.example.com.evil.net/", prefixes)
    assert not redirect_allowed("https://app.example.com:8443@evil.net/", prefixes)
    assert not redirect_allowed("https://app.example.comevil/", prefixes)
    assert not redirect_allowed("https://app.example.com/x", [])


def _clean_env() -> dict[str, str]:
    import os

    from tests.e2e.e2e_helpers import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("REAUTH_")}
    env["PYTHONPATH"] = str(ROOT)
    return env
