"""Helpers shared by CLI commands: settings, logging, engine, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from sqlalchemy.orm import Session

from worker.config import Settings, get_settings
from worker.db import make_engine, session_factory, session_scope
from worker.logging import configure_logging, register_secret

#: Tables stay readable when piped (rich would otherwise wrap at 80 columns).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def setup(*, quiet: bool = False) -> Settings:
    """Load settings (ConfigError → exit 2 in main) and configure logging once."""
    settings = get_settings()
    register_secret(settings.mx_api_key.get_secret_value())
    if settings.webhook_secret is not None:
        register_secret(settings.webhook_secret.get_secret_value())
    configure_logging(
        fmt=settings.log_format.value if settings.log_format else None,
        level="WARNING" if quiet else settings.log_level,
    )
    return settings


@contextmanager
def db_session(settings: Settings) -> Iterator[Session]:
    """One unit of work on the configured database, for commands that need nothing else."""
    engine = make_engine(settings.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def emit(result: Any, json_out: bool) -> None:
    """Print a command's result as JSON (``--json``) or for a human."""
    if json_out:
        print_json(result)
    else:
        console.print(result)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout, one JSON document."""
    print(json.dumps(data, default=str, indent=2, sort_keys=True))


def setup_logging_only(*, level: str) -> None:
    """Re-configure the log level (e.g. a command whose output is a table)."""
    settings = get_settings()
    configure_logging(fmt=settings.log_format.value if settings.log_format else None, level=level)
