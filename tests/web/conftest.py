"""The reconnect service in process: a delivered notification's reconnect_url, served by
`reauth serve`'s app on a free loopback port, against the MX sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from models import Member
from tests.e2e.e2e_helpers import free_port
from tests.pipeline_helpers import make_settings, populate, scan_now
from worker.clock import utc_now
from worker.config import Settings
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.serving import serve_in_thread
from worker.web.app import create_app

SECRET = "s" * 40


@dataclass
class Served:
    """The worker's runtime, the web app's, and where the app listens."""

    worker: Runtime
    web: Runtime
    base_url: str
    sandbox: RunningSandbox
    settings: Settings

    def delivered(self, path: Path) -> list[dict[str, Any]]:
        file = path / "notifications.jsonl"
        return [json.loads(x) for x in file.read_text().splitlines()] if file.exists() else []


@contextmanager
def _serve(db_url: str, sandbox: RunningSandbox, *, channel: str) -> Iterator[Served]:
    """One expired member of ``channel`` notified through an inline scan, and the web app
    serving its link. The sandbox's OAuth window is served by the sandbox itself, and its
    completion messages are accepted (REAUTH_MX_OAUTH_ORIGINS)."""
    port = free_port()  # the app's URL goes into messages, so pick the port first
    base = f"http://127.0.0.1:{port}"
    sandbox.config.uri_base = sandbox.base_url
    extra: dict[str, Any] = {}
    if channel == "APP":  # APP links come back to our /oauth/complete with a signed state
        extra = {
            "app_redirect_url": f"{base}/oauth/complete",
            "allowed_redirect_prefixes": [f"{base}/oauth/complete"],
        }
    settings = make_settings(
        db_url, sandbox, public_url=base, reconnect_secrets=[SECRET],
        mx_oauth_origins=[sandbox.base_url], **extra,
    )  # fmt: skip
    worker = Runtime(settings, inline=True)
    web = Runtime(settings)
    try:
        populate(worker.engine, 1, utc_now())  # one expired member
        with worker.engine.begin() as conn:
            conn.execute(update(Member).values(channel=channel))
        scan_now(worker, trigger="test")
        with serve_in_thread(create_app(web), port=port, name="reauth-serve"):
            yield Served(worker, web, base, sandbox, settings)
    finally:
        web.close()
        worker.close()


@pytest.fixture
def served(db_url: str, sandbox: RunningSandbox) -> Iterator[Served]:
    with _serve(db_url, sandbox, channel="BROWSER") as s:
        yield s


@pytest.fixture
def served_app(db_url: str, sandbox: RunningSandbox) -> Iterator[Served]:
    with _serve(db_url, sandbox, channel="APP") as s:
        yield s


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A headless Chromium for one test (skipped loudly without it; CI installs it).

    It asks for the test's server first (``served_app``, ``ops_url`` or ``served``, the first
    the test uses), so it starts after and stops before that server's runtime:
    Playwright's sync API keeps an event loop running on this thread while it is open, and the
    runtimes run their own loop here when they start and close."""
    from tests.conftest import unavailable
    from tests.web.browser_helpers import chromium_path

    servers = ("served_app", "ops_url", "served")
    request.getfixturevalue(next((n for n in servers if n in request.fixturenames), "served"))
    path = chromium_path()
    if path is None:
        unavailable("Chromium (apt-get install chromium)", FileNotFoundError("chromium"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()
