"""On-call views: ``status`` (the fleet at a glance) and ``history`` (one member)."""

from __future__ import annotations

import typer
from rich.table import Table

from worker.cli import app
from worker.cli.output import JSON_OPT, console, db_session, print_json, safe, setup


@app.command("status")
def status(json_out: bool = JSON_OPT) -> None:
    """Members per state and reason, outbox by status, last scan, gave-up count."""
    from worker.service import actions

    with db_session(setup(quiet=True)) as s:
        result = actions.status(s)
    if json_out:
        print_json(result)
        return
    table = Table(title="members by state/reason")
    table.add_column("state/reason")
    table.add_column("count", justify="right")
    for key, n in result["members"].items():
        table.add_row(safe(key), str(n))
    console.print(table)
    console.print(f"outbox: {result['outbox']}")
    console.print(f"gave up: {result['gave_up']}")
    console.print(f"last scan: {result['last_scan']}")


@app.command("history")
def history(member_guid: str = typer.Argument(...), json_out: bool = JSON_OPT) -> None:
    """Attempts, notifications and ops actions for one member, in time order."""
    from worker.service import actions

    with db_session(setup(quiet=True)) as s:
        result = actions.history(s, member_guid)
    if json_out:
        print_json(result)
        return
    console.print(result["member"])
    table = Table(title=f"history of {safe(member_guid)}")
    for col in ("at", "kind", "details"):
        table.add_column(col)
    for e in result["events"]:
        details = ", ".join(f"{k}={v}" for k, v in e.items() if k not in {"at", "kind"})
        table.add_row(str(e["at"]), e["kind"], safe(details))
    console.print(table)
