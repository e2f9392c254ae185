"""The reconnect service in process: a delivered notification's reconnect_url, served by
`reauth serve`'s app on a free loopback port, against the MX sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline_helpers import make_settings, populate, scan_now
from worker.clock import utc_now
from worker.config import Settings
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.web.app import create_app
from worker.web.server import serve_in_thread

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


@pytest.fixture
def served(db_url: str, sandbox: RunningSandbox, tmp_path: Path) -> Iterator[Served]:
    """One expired member notified through an inline scan, and the web app serving its link."""
    import socket

    with socket.socket() as probe:  # the app's URL goes into messages, so pick the port first
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(
        db_url, sandbox, public_url=base, reconnect_secrets=[SECRET], allow_insecure_urls=True
    )
    worker = Runtime(settings, inline=True)
    web = Runtime(settings)
    try:
        populate(worker.engine, 1, utc_now())  # one expired member
        scan_now(worker, trigger="test")
        with serve_in_thread(create_app(web), port=port, name="reauth-serve"):
            yield Served(worker, web, base, sandbox, settings)
    finally:
        web.close()
        worker.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (skipped loudly without it; CI installs it)."""
    from tests.conftest import unavailable
    from tests.web.browser import chromium_path

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
