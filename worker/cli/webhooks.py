"""``reauth webhooks``: the MX webhook inbox for on-call (list, replay, stats).

Applying is the job's work (``reauth.apply_webhooks``); ``replay`` only makes events pending
again and queues it (or, with ``--inline``, runs it in this process). Bodies are printed only
with ``--body``: they carry member and user guids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from models import WebhookEvent
from worker.app import jobs
from worker.cli import app
from worker.cli.output import console, db_session, print_json, runtime, safe, setup
from worker.clock import utc_now
from worker.core.ages import parse_window
from worker.errors import InputError
from worker.store import inbox
from worker.store.db import session_scope

webhooks_app = typer.Typer(help="MX webhooks received: list them, replay them, count them.")
app.add_typer(webhooks_app, name="webhooks")


def _since(text: str) -> datetime:
    try:
        return utc_now() - parse_window(text, "--since")
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _check_status(status: str | None) -> None:
    if status is not None and status not in inbox.STATUSES:
        raise InputError(f"--status must be one of {', '.join(inbox.STATUSES)}; got {status!r}")


def _row(e: WebhookEvent, *, body: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": e.id,
        "received_at": e.received_at.isoformat(),
        "type": e.event_type,
        "action": e.action,
        "member_guid": e.member_guid,
        "status": e.status,
        "note": e.note,
        "duplicates": e.duplicates,
        "attempts": e.attempts,
        "applied_at": e.applied_at.isoformat() if e.applied_at else None,
    }
    if body:
        row["body"] = e.body.decode("utf-8", "replace")
    return row


@webhooks_app.command("list")
def list_events(
    status: str | None = typer.Option(
        None, "--status", help="pending, applied, ignored, rejected or failed."
    ),
    event_type: str | None = typer.Option(None, "--type", help="e.g. CONNECTION_STATUS."),
    member: str | None = typer.Option(None, "--member", help="Only this member guid."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="At most this many rows."),
    body: bool = typer.Option(False, "--body", help="Include the raw bodies."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Received events, newest first."""
    _check_status(status)
    with db_session(setup(quiet=True)) as session:
        rows = [
            _row(e, body=body)
            for e in inbox.recent(
                session,
                limit=limit,
                status=status,
                event_type=event_type.upper() if event_type else None,
                member_guid=member,
            )
        ]
    if json_out:
        print_json({"events": rows})
        return
    table = Table(title="MX webhooks (newest first)")
    for column in ("id", "received", "type", "action", "member", "status", "dup", "note"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["id"]), r["received_at"], safe(r["type"]), safe(r["action"] or ""),
            safe(r["member_guid"] or ""), r["status"], str(r["duplicates"]),
            safe(r["note"] or ""),
        )  # fmt: skip
    console.print(table)
    if body:
        for r in rows:
            console.print(f"{r['id']}: {safe(r['body'])}")


@webhooks_app.command("replay")
def replay(
    ids: Annotated[list[int] | None, typer.Option("--id", help="This event (repeatable).")] = None,
    status: str | None = typer.Option(
        None, "--status", help="Every event in this status (e.g. failed)."
    ),
    since: str | None = typer.Option(None, "--since", help="Received within, e.g. 2h."),
    inline: bool = typer.Option(
        False,
        "--inline",
        help="Apply now in this process instead of queueing reauth.apply_webhooks.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make events pending again and apply them (MX is read again, so a replay is safe).

    Rejected events are never replayed. Give --id, --status or --since.
    """
    _check_status(status)
    if not ids and status is None and since is None:
        raise InputError("give --id, --status or --since (nothing is replayed by default)")
    settings = setup(quiet=True)
    with runtime(settings, inline=inline) as rt:
        with session_scope(rt.sessions) as session:
            count = inbox.replay(
                session, ids=ids or None, status=status,
                since=_since(since) if since else None,
            )  # fmt: skip
        result: dict[str, Any] = {"replayed": count}
        if count and inline:
            result["applied"] = jobs.apply_webhooks(rt, clock=utc_now).as_dict()
        elif count:
            rt.followups.apply_webhooks()
    if json_out:
        print_json(result)
    else:
        console.print(f"{count} event(s) pending again" + (", applied" if inline else ""))


@webhooks_app.command("stats")
def stats(
    since: str = typer.Option("24h", "--since", help="Received within, e.g. 24h or 7d."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Counts by type and status, duplicates, and the oldest pending event."""
    with db_session(setup(quiet=True)) as session:
        found = inbox.stats(session, since=_since(since))
    oldest = found["oldest_pending"]
    found["oldest_pending"] = oldest.isoformat() if oldest else None
    if json_out:
        print_json(found)
        return
    table = Table(title=f"MX webhooks received in the last {since}")
    for column in ("type", *inbox.STATUSES):
        table.add_column(column)
    for event_type, counts in sorted(found["by_type"].items()):
        table.add_row(safe(event_type), *(str(counts.get(s, 0)) for s in inbox.STATUSES))
    console.print(table)
    console.print(f"duplicates: {found['duplicates']}; oldest pending: {oldest or 'none'}")
