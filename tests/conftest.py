"""Shared fixtures: real PostgreSQL and Redis, SQLite, settings.

* ``REAUTH_TEST_DATABASE_URL`` (default ``postgresql+psycopg://postgres@localhost/test``) names a
  server; each test run creates a fresh database on it, migrates it once, and drops it at the end.
* ``REAUTH_TEST_REDIS_URL`` (default ``redis://localhost:6379/15``); flushed before each test that
  uses it.
* When a server is unreachable the tests that need it are skipped with a loud reason on a laptop,
  but fail when ``CI=true``: CI must never go green by skipping.
* ``db_url`` is parametrised over SQLite and PostgreSQL for code that supports both.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

import models
from worker.config import get_settings
from worker.runtime import Runtime
from worker.sandbox.config import SandboxConfig
from worker.sandbox.server import RunningSandbox, running_sandbox
from worker.store import migrate
from worker.store.db import make_engine, session_factory

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_DATABASE_URL = os.environ.get(
    "REAUTH_TEST_DATABASE_URL", "postgresql+psycopg://postgres@localhost/test"
)
TEST_REDIS_URL = os.environ.get("REAUTH_TEST_REDIS_URL", "redis://localhost:6379/15")


def unavailable(what: str, exc: BaseException) -> None:
    """Skip loudly on a laptop, fail in CI."""
    message = f"{what} is not reachable ({exc.__class__.__name__}: {exc})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(f"!!! SKIPPED: {message}")


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's .env or REAUTH_ environment by accident."""
    for key in list(os.environ):
        if key.startswith("REAUTH_") and not key.startswith("REAUTH_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True, scope="session")
def _uncached_loggers() -> Iterator[None]:
    """Commands run in-process configure structlog with ``cache_logger_on_first_use`` (right for
    a process, which configures once), and a logger cached then is invisible to every later
    ``structlog.testing.capture_logs`` (structlog documents the limit): a test that asserts on
    log lines passed alone and failed after a CLI test. Tests keep the configuration, uncached."""
    import structlog

    original = structlog.configure

    def configure(**settings: Any) -> None:
        original(**{**settings, "cache_logger_on_first_use": False})

    structlog.configure = configure  # type: ignore[assignment]
    yield
    structlog.configure = original


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """A command run in-process configures logging for the whole interpreter: its bound-logger
    class drops INFO lines when the stdlib level says so (Python's default root level is
    WARNING) before any processor, capture_logs included. Give the next test the root logger
    and structlog's configuration as this one found them."""
    import structlog

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    config = structlog.get_config()
    yield
    root.setLevel(level)
    root.handlers = handlers
    structlog.configure(**config)


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def _pg_database(pg_server_url: str) -> Iterator[str | BaseException]:
    """Create a fresh, migrated database for this run; yields its URL (or the connect error)."""
    name = f"reauth_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_url = make_url(pg_server_url)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        yield exc
        return
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(_pg_database: str | BaseException) -> str:
    """URL of the run's migrated PostgreSQL database, emptied before the test."""
    if isinstance(_pg_database, BaseException):
        unavailable("PostgreSQL at REAUTH_TEST_DATABASE_URL", _pg_database)
        raise AssertionError("unreachable")
    engine = create_engine(_pg_database)
    tables = ", ".join(t.name for t in models.Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return _pg_database


# --- SQLite -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite database file private to the test."""
    path = tmp_path / "reauth.db"
    shutil.copy(_sqlite_template, path)
    return f"sqlite:///{path}"


# --- both ---------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database: once on SQLite, once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


# --- Redis --------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    """URL of the test Redis database, flushed before the test."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        unavailable("Redis at REAUTH_TEST_REDIS_URL", exc)
    finally:
        client.close()
    return TEST_REDIS_URL


# --- the pipeline in process --------------------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    """The MX sandbox on a free loopback port (no faults)."""
    with running_sandbox(SandboxConfig()) as sb:
        yield sb


@pytest.fixture
def runtime(db_url: str, sandbox: RunningSandbox) -> Iterator[Runtime]:
    """A process runtime on ``db_url`` against the sandbox, with inline task follow-ups."""
    from tests.pipeline_helpers import make_settings

    rt = Runtime(make_settings(db_url, sandbox), inline=True)
    yield rt
    rt.close()


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture
def env(db_url: str, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> str:
    """REAUTH_* variables for an in-process CLI run on ``db_url`` against the sandbox."""
    from tests.pipeline_helpers import REDIRECT, SCHEME
    from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID

    for key, value in {
        "REAUTH_DATABASE_URL": db_url,
        "REAUTH_MX_BASE_URL": sandbox.base_url,
        "REAUTH_MX_SSO_BASE_URL": sandbox.sso_base_url,
        "REAUTH_ALLOW_INSECURE_URLS": "true",
        "REAUTH_MX_CLIENT_ID": DEFAULT_CLIENT_ID,
        "REAUTH_MX_API_KEY": DEFAULT_API_KEY,
        "REAUTH_APP_REDIRECT_URL": REDIRECT,
        "REAUTH_APP_URL_SCHEME": SCHEME,
        "REAUTH_ALLOWED_REDIRECT_PREFIXES": REDIRECT,
        "REAUTH_NOTIFY_SINK": "file",
        "REAUTH_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, value)
    from worker.config import get_settings

    get_settings.cache_clear()
    return db_url
