"""On-call views: ``status`` (the fleet at a glance) and ``history`` (one member), rendered for
a person by ``cli.views`` (``--json``: the service's document as is); ``unpause-mx`` lifts the
fleet-wide MX pause once its cause is fixed."""

from __future__ import annotations

import typer

from worker.cli import app
from worker.cli.output import JSON_OPT, console, db_session, emit, print_json, safe, setup
from worker.clock import utc_now


@app.command("status")
def status(json_out: bool = JSON_OPT) -> None:
    """Members per state and reason, outbox, grouping, the day's funnel, last scan, MX pause,
    and what to do next."""
    from worker.cli.views import render_status
    from worker.service import actions

    settings = setup(quiet=True)
    now = utc_now()
    with db_session(settings) as s:
        result = actions.status(
            s,
            now,
            grouping=settings.notify_grouping.value,
            grouping_window=settings.grouping_window,
        )
    if json_out:
        print_json(result)
        return
    for part in render_status(result, now, scan_interval=settings.scan_interval):
        console.print(part)


@app.command("history")
def history(member_guid: str = typer.Argument(...), json_out: bool = JSON_OPT) -> None:
    """Attempts, notifications, funnel events and ops actions for one member, in time order."""
    from worker.cli.views import render_history
    from worker.service import actions

    with db_session(setup(quiet=True)) as s:
        result = actions.history(s, member_guid)
    if json_out:
        print_json(result)
        return
    for part in render_history(result, utc_now()):
        console.print(part)


@app.command("unpause-mx")
def unpause_mx(
    why: str = typer.Option(..., "--why", help="What you fixed (kept in the audit)."),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Lift the fleet-wide MX pause now (it lifts itself after REAUTH_BACKOFF_BASE otherwise)."""
    from worker.service import actions

    with db_session(setup(quiet=True)) as s:
        result = actions.unpause_mx(
            s, actor=actor or actions.default_actor(), why=why, now=utc_now()
        )
    if json_out:
        emit(result, True)
    elif result["lifted"]:
        console.print(f"MX calls resume; the pause was: {safe(result['was'])}")
    else:
        console.print("MX calls were not paused; nothing changed")
