"""Operator commands: members import, scan, rerun, oauth-result, status, history, worker, beat.

Thin shells over worker/ops.py, worker/scan.py and the Celery tasks. ``--inline`` runs the same
task bodies in this process (no broker or worker needed); otherwise work is enqueued on Celery.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from worker.cli import app
from worker.cli.common import console, db_session, emit, print_json, setup
from worker.clock import utc_now
from worker.config import Settings
from worker.db import session_scope
from worker.errors import ConfigError, InputError
from worker.policy import Reason
from worker.runtime import Runtime

members_app = typer.Typer(help="Member data: import.")
app.add_typer(members_app, name="members")

JSON_OPT = typer.Option(False, "--json", help="Print machine-readable JSON.")


def _reason(value: str | None) -> Reason | None:
    if value is None:
        return None
    try:
        return Reason(value.lower())
    except ValueError:
        raise InputError(
            f"--reason {value!r} is not one of {', '.join(r.value for r in Reason)}"
        ) from None


def _runtime(settings: Settings) -> Runtime:
    return Runtime(settings)


def _use_inline(settings: Settings, inline: bool) -> bool:
    if inline:
        return True
    if settings.broker_url is None:
        raise ConfigError(
            "REAUTH_BROKER_URL is not set: nothing would consume the work. Use --inline to run "
            "it in this process, or set REAUTH_BROKER_URL (e.g. redis://localhost:6379/0)."
        )
    return False


def _inline(rt: Runtime) -> None:
    from worker import tasks

    tasks.set_runtime(rt)
    tasks.set_followups(tasks.InlineFollowups())


# --- members import -----------------------------------------------------------------------------


@members_app.command("import")
def import_members(
    file: Path = typer.Argument(..., help="JSONL or CSV file of members.", exists=False),
    strict: bool = typer.Option(False, "--strict", help="Write nothing if any row is bad."),
    fmt: str | None = typer.Option(None, "--format", help="jsonl or csv (default: by suffix)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Upsert members by member_guid. Bad rows are reported by line and not written."""
    from worker import importer, ops

    settings = setup(quiet=json_out)
    if not file.is_file():
        raise InputError(f"{file}: no such file")
    kind = importer.detect_format(file, fmt)
    parsed = importer.parse(file.read_bytes(), kind)
    rt = _runtime(settings)
    now = utc_now()
    try:
        if parsed.errors and strict:
            result = importer.ImportResult(errors=parsed.errors, written=False)
        else:
            with session_scope(rt.sessions) as s:
                result = importer.upsert(s, [r for _, r in parsed.rows], now=now, cfg=rt.policy)
                result.errors = parsed.errors
                ops.record(
                    s, actor=ops.default_actor(), command="members import",
                    arguments={"file": str(file), "strict": strict, "rows": len(parsed.rows)},
                    why=None, result={k: v for k, v in result.as_dict().items() if k != "errors"},
                    now=now,
                )  # fmt: skip
    finally:
        rt.close()
    if json_out:
        print_json(result.as_dict())
    else:
        for err in result.errors:
            console.print(f"[red]{file}:{err.line}[/]: {err.message}")
        verb = "wrote" if result.written else "wrote nothing (--strict)"
        console.print(
            f"{verb}: {result.inserted} inserted, {result.updated} updated, "
            f"{result.unchanged} unchanged, {result.episodes_closed} episodes closed; "
            f"{len(result.errors)} bad rows"
        )
    if result.errors:
        raise typer.Exit(1)


# --- scan ---------------------------------------------------------------------------------------


@app.command("scan")
def scan(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would happen; change nothing."
    ),
    inline: bool = typer.Option(
        False, "--inline", help="Run the scan and batches in this process."
    ),
    reason: str | None = typer.Option(None, "--reason", help="Only revoked, expired or abandoned."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N members."),
    json_out: bool = JSON_OPT,
) -> None:
    """Scan for due members now (enqueue on Celery, or --inline, or --dry-run)."""
    settings = setup(quiet=json_out)
    want = _reason(reason)
    rt = _runtime(settings)
    try:
        if dry_run:
            from worker.scan import dry_run as plan

            rows = plan(rt, now=utc_now(), limit=limit, reason=want)
            _print_plan(rows, json_out)
            return
        if _use_inline(settings, inline):
            _inline(rt)
            from worker import tasks

            result = tasks.scan.run(trigger="cli", limit=limit, reason=want.value if want else None)
        else:
            from worker.tasks import scan as scan_task

            scan_task.apply_async(kwargs={"trigger": "cli", "limit": limit,
                                          "reason": want.value if want else None})  # fmt: skip
            result = {"enqueued": True}
    finally:
        rt.close()
    emit(result, json_out)


def _print_plan(rows: list[Any], json_out: bool) -> None:
    if json_out:
        print_json([vars(r) for r in rows])
        return
    table = Table(title=f"dry run: {len(rows)} due members (nothing written, no MX call)")
    for col in ("member", "reason", "action", "episode", "reminder", "skip_aggregation", "why",
                "channel", "redirect"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.member_guid, r.reason or "-", r.action, str(r.episode),
            str(r.reminder or "-"), str(r.skip_aggregation if r.skip_aggregation is not None
                                        else "-"),
            r.skip_why or "-", r.channel, "yes" if r.redirect else "no",
        )  # fmt: skip
    console.print(table)


# --- rerun --------------------------------------------------------------------------------------


@app.command("rerun")
def rerun(
    member_guids: list[str] = typer.Argument(None, help="Member guids (or use --reason)."),
    reason: str | None = typer.Option(None, "--reason", help="All members with this reason."),
    institution: str | None = typer.Option(None, "--institution", help="Only this institution."),
    force: bool = typer.Option(False, "--force", help="Skip backoff and reminder timing."),
    why: str = typer.Option(..., "--why", help="Why you are doing this (kept in the audit)."),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
    inline: bool = typer.Option(False, "--inline", help="Process in this process."),
    json_out: bool = JSON_OPT,
) -> None:
    """Process members now, outside the schedule (recorded with actor and why)."""
    from worker import ops, repository

    settings = setup(quiet=json_out)
    want = _reason(reason)
    if not member_guids and want is None:
        raise InputError("rerun needs member guids or --reason")
    if member_guids and (want is not None or institution):
        raise InputError("give member guids or --reason/--institution, not both")
    if not why.strip():
        raise InputError("--why must say why")
    use_inline = _use_inline(settings, inline)
    rt = _runtime(settings)
    now = utc_now()
    owner = repository.new_owner()
    try:
        with session_scope(rt.sessions) as s:
            ids = ops.select_for_rerun(
                rt, s, guids=member_guids or [], reason=want, institution=institution, now=now
            )
            claimed: list[int] = []
            for start in range(0, len(ids), settings.batch_size):
                page = repository.claim_due(
                    s, now=now, owner=owner, lease=settings.claim_lease,
                    limit=settings.batch_size, member_ids=ids[start : start + settings.batch_size],
                )  # fmt: skip
                claimed.extend(page.ids)
            summary = {
                "selected": len(ids),
                "claimed": len(claimed),
                "busy": len(ids) - len(claimed),
                "force": force,
            }
            ops.record(
                s, actor=actor or ops.default_actor(), command="rerun",
                arguments={"member_guids": member_guids or [], "reason": reason,
                           "institution": institution, "force": force},
                why=why, result=summary, now=now,
            )  # fmt: skip
        if use_inline:
            _inline(rt)
        from worker import tasks

        for start in range(0, len(claimed), settings.batch_size):
            tasks.followups.regenerate(
                claimed[start : start + settings.batch_size], owner, force=force, trigger="rerun"
            )
    finally:
        rt.close()
    emit(summary, json_out)


# --- oauth-result, status, history ----------------------------------------------------------------


@app.command("oauth-result")
def oauth_result(
    member_guid: str = typer.Argument(..., help="The member whose OAuth ended."),
    status: str = typer.Option(..., "--status", help="success or error."),
    error_reason: str | None = typer.Option(None, "--error-reason", help="With --status error."),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Record an OAuth result (from a redirect handler or MX webhook consumer)."""
    from worker import ops

    with db_session(setup(quiet=json_out)) as s:
        result = ops.oauth_result(
            s, member_guid=member_guid, status=status, error_reason=error_reason,
            now=utc_now(), actor=actor or ops.default_actor(),
        )  # fmt: skip
    emit(result, json_out)


@app.command("status")
def status(json_out: bool = JSON_OPT) -> None:
    """Members per state and reason, outbox by status, last scan, gave-up count."""
    from worker import ops

    with db_session(setup(quiet=True)) as s:
        result = ops.status(s)
    if json_out:
        print_json(result)
        return
    table = Table(title="members by state/reason")
    table.add_column("state/reason")
    table.add_column("count", justify="right")
    for key, n in result["members"].items():
        table.add_row(key, str(n))
    console.print(table)
    console.print(f"outbox: {result['outbox']}")
    console.print(f"gave up: {result['gave_up']}")
    console.print(f"last scan: {result['last_scan']}")


@app.command("history")
def history(member_guid: str = typer.Argument(...), json_out: bool = JSON_OPT) -> None:
    """Attempts, notifications and ops actions for one member, in time order."""
    from worker import ops

    with db_session(setup(quiet=True)) as s:
        result = ops.history(s, member_guid)
    if json_out:
        print_json(result)
        return
    console.print(result["member"])
    table = Table(title=f"history of {member_guid}")
    for col in ("at", "kind", "details"):
        table.add_column(col)
    for e in result["events"]:
        details = ", ".join(f"{k}={v}" for k, v in e.items() if k not in {"at", "kind"})
        table.add_row(str(e["at"]), e["kind"], details)
    console.print(table)


# --- worker and beat ------------------------------------------------------------------------------


def _celery(argv: list[str]) -> None:
    settings = setup()
    if settings.broker_url is None:
        raise ConfigError("REAUTH_BROKER_URL is not set; the worker and beat need a broker")
    if settings.metrics_port and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Prefork children count in their own processes; multiprocess mode lets the parent
        # serve their sum. Must be set before prometheus_client is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="reauth-metrics-")
    from worker.celery_app import app as celery_app

    celery_app.start(argv)
    sys.exit(0)


@app.command("worker")
def worker(
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", min=1),
    beat: bool = typer.Option(False, "--beat", help="Embed beat (development only)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
) -> None:
    """Run a Celery worker with the project's app (same as celery -A worker.celery_app worker)."""
    argv = ["worker", "--loglevel", loglevel, "-Q", "reauth"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if beat:
        argv.append("--beat")
    _celery(argv)


@app.command("beat")
def beat(loglevel: str = typer.Option("INFO", "--loglevel")) -> None:
    """Run Celery beat (the scan every REAUTH_SCAN_INTERVAL and the outbox sweeper)."""
    _celery(["beat", "--loglevel", loglevel])


# --- demo -----------------------------------------------------------------------------------------


@app.command("demo")
def demo(json_out: bool = JSON_OPT) -> None:
    """Run the whole flow on embedded defaults (SQLite, in-process MX sandbox, file sink)."""
    from worker.cli.common import setup_logging_only
    from worker.demo import run_demo

    settings = setup(quiet=True)
    # The table is the demo's output; only errors go to the log.
    setup_logging_only(level="ERROR")
    result = run_demo(settings)
    if json_out:
        print_json(result)
        return
    table = Table(title="reauth demo: one scan against the in-process MX sandbox")
    for col in ("member", "case", "reason", "skip_aggregation", "why", "channel", "redirect",
                "outcome"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for r in result["rows"]:
        style = "green" if r["outcome"] == "success" else ("dim" if "no call" in r["outcome"]
                                                           else "yellow")  # fmt: skip
        table.add_row(
            r["member"], r["case"], r["reason"], r["skip_aggregation"], r["why"], r["channel"],
            r["redirect"], r["outcome"], style=style,
        )  # fmt: skip
    console.print(table)
    summary = result["summary"]
    console.print(
        f"[bold]summary[/]: {summary['members']} members ({summary['members_seeded_now']} seeded "
        f"now); scan claimed {summary['scan']['claimed']} in {summary['scan']['batches']} "
        f"batch(es); {summary['mx_calls']} MX calls; "
        f"[bold]{summary['notifications_created_now']} new notifications[/] this run; "
        f"outbox {summary['outbox']}"
    )
    for name, value in result["backends"].items():
        console.print(f"  {name}: {value}")
    console.print(
        "Run it again: members already notified wait for the user, so no duplicate "
        "notification is created. `reauth status` and `reauth history MEMBER` show the rest."
    )
