"""``reauth purge`` and ``reauth forget``: bounded tables and erasure (docs/RUNBOOK.md)."""

from __future__ import annotations

import typer
from rich.table import Table

from worker.cli import app
from worker.cli.output import JSON_OPT, console, print_json, runtime, safe, setup
from worker.clock import utc_now
from worker.store.db import session_scope


@app.command("purge")
def purge(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Count what would be cleared and deleted; change nothing."
    ),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Clear expired links and delete rows past their REAUTH_RETENTION_* age, in batches."""
    from worker.service import actions, retention
    from worker.store import audit

    settings = setup(quiet=json_out)
    with runtime(settings) as rt:
        result = retention.purge(rt, clock=utc_now, dry_run=dry_run)
        if not dry_run:
            with session_scope(rt.sessions) as s:
                audit.record_action(
                    s,
                    actor=actor or actions.default_actor(),
                    command="purge",
                    arguments={"batch_size": result.batch_size},
                    why=None,
                    result={
                        k.name: k.rows for k in [result.links, result.member_links, *result.kinds]
                    },
                    now=utc_now(),
                )
    data = result.as_dict()
    if json_out:
        print_json(data)
        return
    verb = "would clear/delete" if dry_run else "cleared/deleted"
    table = Table(title=f"purge ({'dry run' if dry_run else 'done'})")
    for col in ("kind", "older than", verb, "batches"):
        table.add_column(col)
    for item in [data["links"], data["member_links"], *data["kinds"]]:
        cutoff = item["cutoff"] or "kept forever"
        table.add_row(item["name"], cutoff, str(item["rows"]), str(item["batches"]))
    console.print(table)
    console.print(f"{data['elapsed_s']}s, batches of at most {data['batch_size']} rows")


@app.command("forget")
def forget(
    user: str | None = typer.Option(None, "--user", help="Forget this user's members (USER_GUID)."),
    member: str | None = typer.Option(None, "--member", help="Forget one member (MEMBER_GUID)."),
    why: str = typer.Option(..., "--why", help="Why (kept in the audit; name no one here)."),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Erase a user or a member and every row that names them; one audit row remains."""
    from worker.service import actions, erasure

    settings = setup(quiet=json_out)
    with runtime(settings) as rt, session_scope(rt.sessions) as s:
        result = erasure.forget(
            s,
            user_guid=user,
            member_guid=member,
            why=why,
            actor=actor or actions.default_actor(),
            now=utc_now(),
        )
    if json_out:
        print_json(result)
        return
    if result["already_forgotten"]:
        console.print(f"already forgotten ({result['guid_sha256']}); nothing to do")
        return
    console.print(
        f"forgot {result['by']} {safe(result['guid_sha256'])}: {result['members']} members, "
        f"{result['attempts']} attempts, {result['notifications']} notifications "
        f"({result['pending_canceled']} pending canceled), {result['clicks']} clicks, "
        f"{result['episodes']} funnel episodes ({result['funnel_events']} events); "
        f"{result['ops_actions_redacted']} earlier audit rows redacted"
    )
