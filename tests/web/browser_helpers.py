"""Playwright driving Debian's Chromium (no browser is downloaded at run time).

Screenshots of every page a test visits go to ``test-output/screenshots/`` (or
``REAUTH_TEST_SCREENSHOTS``), so a person can look at them after a run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("REAUTH_TEST_SCREENSHOTS", ROOT / "test-output" / "screenshots"))


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot named ``name`` and return its path."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
