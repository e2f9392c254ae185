"""Work commands: ``scan`` (enqueue, ``--inline`` or ``--dry-run``), ``rerun`` and
``oauth-result``. ``--inline`` runs the same job bodies in this process (no broker or worker
needed); otherwise work is enqueued on Celery."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from worker.cli import app
from worker.cli.output import (
    JSON_OPT,
    console,
    db_session,
    emit,
    print_json,
    runtime,
    safe,
    setup,
)
from worker.clock import utc_now
from worker.config import Settings
from worker.core.policy import Reason
from worker.errors import ConfigError, InputError, ReauthError
from worker.store.db import session_scope


def _reason(value: str | None) -> Reason | None:
    if value is None:
        return None
    try:
        return Reason(value.lower())
    except ValueError:
        raise InputError(
            f"--reason {value!r} is not one of {', '.join(r.value for r in Reason)}"
        ) from None


def _use_inline(settings: Settings, inline: bool) -> bool:
    if inline:
        return True
    if settings.broker_url is None:
        raise ConfigError(
            "REAUTH_BROKER_URL is not set: nothing would consume the work. Use --inline to run "
            "it in this process, or set REAUTH_BROKER_URL (e.g. redis://localhost:6379/0)."
        )
    return False


@app.command("scan")
def scan(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would happen; change nothing."
    ),
    inline: bool = typer.Option(
        False, "--inline", help="Run the scan and batches in this process."
    ),
    reason: str | None = typer.Option(
        None, "--reason", help=f"Only one reason: {', '.join(r.value for r in Reason)}."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N members."),
    json_out: bool = JSON_OPT,
) -> None:
    """Scan for due members now (enqueue on Celery, or --inline, or --dry-run)."""
    settings = setup(quiet=json_out)
    want = _reason(reason)
    if dry_run:
        from worker.service.scan import dry_run as plan

        with runtime(settings) as rt:
            rows = plan(rt, now=utc_now(), limit=limit, reason=want)
        _print_plan(rows, json_out)
        return
    if _use_inline(settings, inline):
        from worker.app import jobs

        settings.require_mx_credentials()
        with runtime(settings, inline=True) as rt:
            result = jobs.scan(rt, clock=utc_now, trigger="cli", limit=limit, reason=want).as_dict()
            fault = _fault(result, rt.followups)
        if fault is not None:
            emit(result, json_out)
            raise ReauthError(fault)
    else:
        from worker.app.tasks import scan as scan_task

        scan_task.apply_async(
            kwargs={"trigger": "cli", "limit": limit, "reason": want.value if want else None}
        )
        result = {"enqueued": True}
    emit(result, json_out)


def _fault(result: dict[str, Any], followups: object) -> str | None:
    """Why an inline scan did no useful work because of a fault, or None when it did some."""
    from worker.app.followups import InlineFollowups

    if result.get("paused"):
        return f"MX calls are paused: {result['paused']}"
    if not isinstance(followups, InlineFollowups) or not result.get("claimed"):
        return None
    outcomes = followups.outcomes
    # MX answered something about a member (even "gone"): the scan did reach MX. Members that
    # needed no call say nothing either way.
    answered = ("success", "duplicate", "not_oauth_capable", "member_not_found", "bad_request")
    useful = sum(outcomes[k] for k in answered)
    if useful:
        return None
    if followups.configuration_error:
        return f"no member processed: {followups.configuration_error}"
    failed = outcomes["transient"] + outcomes["paused"] + outcomes["skipped"]
    if failed:
        return (
            f"no member processed: {failed} of {result['claimed']} failed transiently "
            "(MX, Redis or the network; see the log and `reauth history MEMBER`)"
        )
    return None


def _print_plan(rows: list[Any], json_out: bool) -> None:
    if json_out:
        print_json([vars(r) for r in rows])
        return
    table = Table(title=f"dry run: {len(rows)} due members (nothing written, no MX call)")
    for col in (
        "member",
        "reason",
        "action",
        "episode",
        "reminder",
        "skip_aggregation",
        "why",
        "channel",
        "redirect",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            safe(r.member_guid),
            r.reason or "-",
            r.action,
            str(r.episode),
            str(r.reminder or "-"),
            str(r.skip_aggregation if r.skip_aggregation is not None else "-"),
            r.skip_why or "-",
            r.channel,
            "yes" if r.redirect else "no",
        )
    console.print(table)


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
    from worker.service import actions
    from worker.store import audit, leases, members

    settings = setup(quiet=json_out)
    want = _reason(reason)
    if not member_guids and want is None:
        raise InputError("rerun needs member guids or --reason")
    if member_guids and (want is not None or institution):
        raise InputError("give member guids or --reason/--institution, not both")
    if not why.strip():
        raise InputError("--why must say why")
    use_inline = _use_inline(settings, inline)
    if use_inline:
        settings.require_mx_credentials()
    now = utc_now()
    owner = leases.new_owner()
    with runtime(settings, inline=use_inline) as rt:
        with session_scope(rt.sessions) as s:
            ids = actions.select_for_rerun(
                s,
                rt.policy,
                guids=member_guids or [],
                reason=want,
                institution=institution,
                now=now,
            )
            claimed: list[int] = []
            for start in range(0, len(ids), settings.batch_size):
                page = members.claim_due(
                    s,
                    now=now,
                    owner=owner,
                    lease=rt.handoff_lease,
                    limit=settings.batch_size,
                    member_ids=ids[start : start + settings.batch_size],
                )
                claimed.extend(page.ids)
            summary = {
                "selected": len(ids),
                "claimed": len(claimed),
                "busy": len(ids) - len(claimed),
                "force": force,
            }
            audit.record_action(
                s,
                actor=actor or actions.default_actor(),
                command="rerun",
                arguments={
                    "member_guids": member_guids or [],
                    "reason": reason,
                    "institution": institution,
                    "force": force,
                },
                why=why,
                result=summary,
                now=now,
            )
        for start in range(0, len(claimed), settings.batch_size):
            rt.followups.regenerate(
                claimed[start : start + settings.batch_size], owner, force=force, trigger="rerun"
            )
    emit(summary, json_out)


# --- oauth-result ---------------------------------------------------------------------------------


@app.command("oauth-result")
def oauth_result(
    member_guid: str = typer.Argument(..., help="The member whose OAuth ended."),
    status: str = typer.Option(..., "--status", help="success or error."),
    error_reason: str | None = typer.Option(None, "--error-reason", help="With --status error."),
    inbound_member_guid: str | None = typer.Option(
        None,
        "--inbound-member-guid",
        help="With --status success: MX finished OAuth on this member (member combination).",
    ),
    actor: str | None = typer.Option(None, "--actor", help="Who (default: the OS user)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Record an OAuth result (from a redirect handler or MX webhook consumer)."""
    from worker.service import actions

    with db_session(setup(quiet=json_out)) as s:
        result = actions.oauth_result(
            s,
            member_guid=member_guid,
            status=status,
            error_reason=error_reason,
            now=utc_now(),
            actor=actor or actions.default_actor(),
            inbound_member_guid=inbound_member_guid,
        )
    emit(result, json_out)
