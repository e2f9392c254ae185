"""The single place that reads the wall clock. Everything else takes ``now`` as an argument."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)
