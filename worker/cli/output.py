"""What every command shares: settings and logging set-up, a runtime, and output (rich for
people, JSON for machines)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from worker import tracing
from worker.config import Settings, get_settings
from worker.logging import configure_logging, setup_from_settings
from worker.runtime import Runtime
from worker.store.db import session_scope

#: Tables stay readable when piped (rich would otherwise wrap at 80 columns). Markup is off:
#: data (a guid, a --why) printed here must never be read as ``[link=...]`` or ``[/]``; styles
#: are passed as ``style=`` instead.
console = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, markup=False)
#: C0 and C1 control characters (ANSI escapes among them) but tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(value: object) -> str:
    """``value`` as text fit for a terminal: control characters (an ANSI escape in a guid, a
    carriage return in a --why) are replaced, so data can never drive the terminal."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", str(value))


def setup(*, quiet: bool = False) -> Settings:
    """Load settings (ConfigError → exit 2 in main) and configure logging once."""
    settings = get_settings()
    setup_from_settings(settings, level="WARNING" if quiet else None)
    tracing.setup("reauth")  # only when OTEL_EXPORTER_OTLP_ENDPOINT is set
    return settings


@contextmanager
def runtime(settings: Settings, *, inline: bool = False) -> Iterator[Runtime]:
    """A runtime for one command, closed when it ends."""
    rt = Runtime(settings, inline=inline)
    try:
        yield rt
    finally:
        rt.close()


@contextmanager
def db_session(settings: Settings) -> Iterator[Session]:
    """One unit of work on the configured database, for commands that need nothing else."""
    with runtime(settings) as rt, session_scope(rt.sessions) as session:
        yield session


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


JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON.")
