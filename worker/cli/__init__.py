"""The ``reauth`` command line: one typer app, subcommands registered from small modules.

Every command goes through :func:`main`, which turns the service's own errors into one clear
message and an exit code (2 for configuration and usage errors, 1 for other failures) instead of
a traceback. Commands that print data accept ``--json``.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from worker.cli.output import err_console, safe
from worker.errors import ConfigError, InputError, ReauthError

app = typer.Typer(
    name="reauth",
    help="Re-authentication worker for MX OAuth members: scan, regenerate links, notify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Exit codes: usage and configuration errors are 2 (like argparse), other failures 1.
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: Interrupted by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from worker.cli import (  # noqa: F401
        db,
        inspect,
        lifecycle,
        members,
        notifications,
        processes,
        report,
        run,
        sandbox,
        serve,
        webhooks,
    )


def _fail(message: str, code: int) -> NoReturn:
    err_console.print("error: ", style="bold red", end="")
    err_console.print(safe(message))
    sys.exit(code)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage errors: typer raises those of its own copy of click, not the installed one."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click import exceptions as vendored
    except ImportError:  # a typer that uses the installed click
        pass
    else:
        kinds.append(vendored.ClickException)
    return tuple(kinds)


def _library_error(exc: Exception) -> str | None:
    """One line for an outage met outside a service boundary (database, Redis, broker)."""
    from sqlalchemy.exc import DBAPIError

    from worker.store.db import storage_error

    if isinstance(exc, DBAPIError):
        return str(storage_error(exc))
    import redis

    if isinstance(exc, redis.RedisError):
        return f"redis (REAUTH_REDIS_URL) failed: {type(exc).__name__}: {exc}"
    from kombu.exceptions import OperationalError as BrokerError

    if isinstance(exc, BrokerError):
        return f"broker (REAUTH_BROKER_URL) unreachable: {exc}"
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register()
    try:
        # In non-standalone mode click returns the code of a typer.Exit instead of raising.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except (ConfigError, InputError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except ReauthError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if isinstance(exc, _usage_errors()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        message = _library_error(exc)
        if message is None:
            raise
        _fail(message, EXIT_FAILURE)
