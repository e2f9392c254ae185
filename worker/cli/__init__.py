"""The ``reauth`` command line: one typer app, subcommands registered from small modules.

Every command goes through :func:`main`, which turns the service's own errors into one clear
message and an exit code (2 for configuration and usage errors, 1 for other failures) instead of
a traceback. Commands that print data accept ``--json``.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from worker.errors import ConfigError, InputError, ReauthError

app = typer.Typer(
    name="reauth",
    help="Re-authentication worker for MX OAuth members: scan, regenerate links, notify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, highlight=False)

#: Exit codes: usage and configuration errors are 2 (like argparse), other failures 1.
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from worker.cli import (  # noqa: F401
        db,
        inspect,
        members,
        notifications,
        processes,
        run,
        sandbox,
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register()
    try:
        # In non-standalone mode click returns the code of a typer.Exit instead of raising.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(EXIT_USAGE)
    except InputError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(EXIT_USAGE)
    except ReauthError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(EXIT_FAILURE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(EXIT_FAILURE)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
