"""``reauth db``: schema migrations."""

from __future__ import annotations

import typer

from worker.cli import app
from worker.cli.output import console, print_json, safe, setup
from worker.store import migrate

db_app = typer.Typer(help="Database schema: upgrade, downgrade, current revision.")
app.add_typer(db_app, name="db")


def _backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return f"{u.get_backend_name()} {u.database or ''}".strip()


def _report(url: str, json_out: bool) -> None:
    rev = migrate.current(url)
    if json_out:
        print_json({"database": _backend(url), "revision": rev})
    else:
        console.print(f"database {safe(_backend(url))} at revision {rev}")


@db_app.command("upgrade")
def upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Apply migrations (creates the schema on a new database)."""
    settings = setup(quiet=True)
    migrate.upgrade(settings.database_url, revision)
    _report(settings.database_url, json_out)


@db_app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. base."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Revert migrations down to REVISION."""
    settings = setup(quiet=True)
    migrate.downgrade(settings.database_url, revision)
    _report(settings.database_url, json_out)


@db_app.command("current")
def current(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Show the schema revision of the configured database."""
    settings = setup(quiet=True)
    rev = migrate.current(settings.database_url)
    if json_out:
        print_json({"database": _backend(settings.database_url), "revision": rev})
    else:
        console.print(rev or "(empty database)")
