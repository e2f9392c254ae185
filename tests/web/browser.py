"""Playwright driving Debian's Chromium (no browser is downloaded at run time).

Screenshots of every page a test visits go to ``test-output/screenshots/`` (or
``REAUTH_TEST_SCREENSHOTS``), so a person can look at them after a run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("REAUTH_TEST_SCREENSHOTS", ROOT / "test-output" / "screenshots"))


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (skipped loudly without it; CI installs it)."""
    from tests.conftest import unavailable

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


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot named ``name`` and return its path."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
