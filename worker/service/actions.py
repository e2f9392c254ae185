"""Operator actions as plain functions: rerun selection, OAuth results, status, history.

The CLI is a thin shell over these. Every state-changing action is recorded in ``ops_actions``
with its actor, arguments and reason, in the same transaction as the change.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from models import Member
from worker.core.funnel import FUNNEL, Event, Stage
from worker.core.policy import (
    IN_EPISODE,
    OAUTH_ERROR_REASONS,
    PolicyConfig,
    Reason,
    State,
    ended_by_oauth_success,
    reason_for,
)
from worker.errors import InputError, UnknownMemberError
from worker.store import attempts, audit, decisions, funnel, locks, members, notifications


def default_actor() -> str:
    """The OS user running the command (overridden by ``--actor``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def members_by_guid(
    session: Session, guids: Sequence[str], *, for_update: bool = False
) -> list[Member]:
    """The members named, or :class:`UnknownMemberError` naming every unknown guid."""
    found = members.by_guids(session, list(guids), for_update=for_update)
    missing = [g for g in guids if g not in found]
    if missing:
        raise UnknownMemberError(missing)
    return [found[g] for g in guids]


def select_for_rerun(
    session: Session,
    cfg: PolicyConfig,
    *,
    guids: Sequence[str],
    reason: Reason | None,
    institution: str | None,
    now: datetime,
) -> list[int]:
    """Member ids an operator's rerun applies to."""
    if guids:
        return [m.id for m in members_by_guid(session, guids)]
    if reason is None:
        raise InputError("rerun needs member guids or --reason")
    return [
        m.id
        for m in members.oauth_members(session, institution=institution)
        if reason_for(members.snapshot(m), now, cfg) is reason
    ]


def oauth_result(
    session: Session,
    *,
    member_guid: str,
    status: str,
    error_reason: str | None,
    now: datetime,
    actor: str,
    inbound_member_guid: str | None = None,
) -> dict[str, Any]:
    """Record the end of an OAuth attempt. Success ends the episode and stops reminders.

    ``inbound_member_guid``: MX can finish OAuth on another member than the one it started for
    (member combination). A success names that inbound member; the member it was started for
    is reconnected all the same, and the inbound one, if we know it, is too.
    """
    status = status.lower()
    if status not in {"success", "error"}:
        raise InputError(f"--status must be success or error, not {status!r}")
    if error_reason is not None:
        error_reason = error_reason.upper()
        if error_reason not in OAUTH_ERROR_REASONS:
            raise InputError(
                f"--error-reason {error_reason!r} is not one of {sorted(OAUTH_ERROR_REASONS)}"
            )
        if status == "success":
            raise InputError("--error-reason only goes with --status error")
    if inbound_member_guid is not None and status != "success":
        raise InputError("--inbound-member-guid only goes with --status success")
    (m,) = members_by_guid(session, [member_guid], for_update=True)
    before = {"state": m.reauth_state, "episode": m.episode}
    combined: list[str] = []
    if status == "success" and inbound_member_guid and inbound_member_guid != member_guid:
        inbound = members.by_guids(session, [inbound_member_guid], for_update=True)
        for other in inbound.values():
            _reconnected(session, other, now)
            combined.append(other.member_guid)
    if status == "success":
        # MX aggregates and reconnects the member after a successful OAuth; until an import
        # says otherwise, the member counts as CONNECTED so no new episode opens on old data.
        members.set_mx_fields(
            m,
            {
                "oauth_status": "SUCCESS",
                "oauth_error_reason": None,
                "connection_status": "CONNECTED",
            },
        )
        snap = members.snapshot(m)
        _result_events(session, m, "success", now)
        decisions.apply(
            session,
            [decisions.Change(m.id, snap.state, ended_by_oauth_success(snap), confirmed=True)],
            now=now,
        )
    else:
        _result_events(session, m, error_reason or "error", now)
        members.set_mx_fields(m, {"oauth_status": "ERRORED", "oauth_error_reason": error_reason})
        # A batch in flight decided on the old state; let the next scan decide again
        # (e.g. CANCELLED → abandoned).
        members.make_due(m, now)
    result = {
        "member_guid": m.member_guid,
        "before": before,
        "after": {"state": m.reauth_state, "episode": m.episode},
        "oauth_status": m.oauth_status,
        "combined": combined,
    }
    audit.record_action(
        session,
        actor=actor,
        command="oauth-result",
        arguments={
            "member_guid": member_guid,
            "status": status,
            "error_reason": error_reason,
            "inbound_member_guid": inbound_member_guid,
        },
        why=None,
        result=result,
        now=now,
    )
    return result


def _reconnected(session: Session, m: Member, now: datetime) -> None:
    """OAuth succeeded for ``m``: CONNECTED until MX says otherwise; the episode ends."""
    success = {"oauth_status": "SUCCESS", "oauth_error_reason": None}
    members.set_mx_fields(m, {**success, "connection_status": "CONNECTED"})
    snap = members.snapshot(m)
    decisions.apply(
        session,
        [decisions.Change(m.id, snap.state, ended_by_oauth_success(snap), confirmed=True)],
        now=now,
    )


def _result_events(session: Session, m: Member, result: str, now: datetime) -> None:
    """An OAuth result for an open episode: the funnel's RESULT (an operator's or the app's
    word; a success is confirmed by the decision that follows)."""
    if State(m.reauth_state) in IN_EPISODE:
        funnel.record(session, [Event(m.id, m.episode, Stage.RESULT, now, detail=result)])


#: The funnel line of ``reauth status`` counts the episodes detected this long ago at most.
STATUS_FUNNEL_SPAN = timedelta(hours=24)


def status(
    session: Session,
    now: datetime,
    *,
    grouping: str = "member",
    grouping_window: timedelta = timedelta(0),
) -> dict[str, Any]:
    """Members per state and reason, outbox by status (and its oldest pending row), how
    notifications are grouped (``user``: pending rows may wait ``grouping_window`` on purpose),
    the funnel of the episodes detected in the last 24 h, the last scan, the gave-up count, and
    the fleet-wide MX pause if one holds at ``now``."""
    counts = members.counts_by_state(session)
    by_state = {f"{state}/{reason or '-'}": n for (state, reason), n in counts.items()}
    last = audit.last_scan(session)
    pause = locks.mx_pause(session, now)
    oldest = notifications.oldest_pending_at(session)
    day = funnel.group_counts(session, now - STATUS_FUNNEL_SPAN, None)
    return {
        "members": by_state,
        "members_total": sum(by_state.values()),
        "outbox": notifications.counts_by_status(session),
        "outbox_oldest_pending_at": None if oldest is None else oldest.isoformat(),
        "notify_grouping": {
            "mode": grouping,
            "window_s": int(grouping_window.total_seconds()) if grouping == "user" else 0,
        },
        "funnel_24h": day[0].stages if day else {stage.value: 0 for stage, _ in FUNNEL},
        "gave_up": sum(n for (state, _), n in counts.items() if state == State.GAVE_UP),
        "mx_paused": None if pause is None else {"why": pause[0], "until": pause[1].isoformat()},
        "last_scan": None
        if last is None
        else {
            "trigger": last.trigger,
            "started_at": last.started_at.isoformat(),
            "finished_at": None if last.finished_at is None else last.finished_at.isoformat(),
            "duration_s": last.duration_s,
            "claimed": last.claimed,
            "batches": last.batches,
            "skipped_lock": last.skipped_lock,
            "interrupted": last.interrupted,
        },
    }


def unpause_mx(session: Session, *, actor: str, why: str, now: datetime) -> dict[str, Any]:
    """Lift the fleet-wide MX pause now (its cause fixed), recorded in ``ops_actions``."""
    if not why.strip():
        raise InputError("--why must say why")
    lifted = locks.lift_mx_pause(session)
    result = {"lifted": lifted is not None, "was": lifted}
    audit.record_action(
        session, actor=actor, command="unpause-mx", arguments={}, why=why, result=result, now=now
    )
    return result


def history(session: Session, member_guid: str) -> dict[str, Any]:
    """Attempts, notifications (with the grouped message each went out in), funnel events and
    ops actions of one member, in time order."""
    (m,) = members_by_guid(session, [member_guid])
    events: list[dict[str, Any]] = []
    for a in attempts.for_member(session, m.id):
        events.append(
            {
                "at": a.created_at,
                "kind": "attempt",
                "episode": a.episode,
                "reminder": a.reminder,
                "trigger": a.trigger,
                "outcome": a.outcome,
                "http_status": a.http_status,
                "referral_source": a.referral_source,
                "skip_aggregation": a.skip_aggregation,
                "skip_aggregation_why": a.skip_aggregation_why,
                "redirect_used": a.redirect_used,
                "error": a.error_class,
                "latency_ms": a.latency_ms,
            }
        )
    for n in notifications.for_member(session, m.id):
        events.append(
            {
                "at": n.created_at,
                "kind": "notification",
                "id": str(n.id),
                "idempotency_key": n.idempotency_key,
                "status": n.status,
                "attempts": n.attempts,
                "sent_at": n.sent_at,
                # The grouped message (reauth.oauth_links) it went out in: the id consumers saw.
                "group_id": None if n.group_id is None else str(n.group_id),
            }
        )
    for f in funnel.path(session, m.id):
        events.append(
            {
                "at": f.at,
                "kind": "funnel",
                "stage": f.stage,
                "episode": f.episode,
                "reminder": f.reminder,
                "detail": f.detail,
                "how": f.how,
            }
        )
    for o in audit.actions_naming(session, member_guid):
        events.append(
            {
                "at": o.created_at,
                "kind": "ops",
                "command": o.command,
                "actor": o.actor,
                "why": o.why,
            }
        )
    events.sort(key=lambda e: e["at"])
    return {
        "member": {
            "member_guid": m.member_guid,
            "user_guid": m.user_guid,
            "institution_code": m.institution_code,
            "connection_status": m.connection_status,
            "state": m.reauth_state,
            "reason": m.reauth_reason,
            "episode": m.episode,
            "reminders_sent": m.reminders_sent,
            "attempts": m.attempts,
            "next_attempt_at": m.next_attempt_at,
            "last_error": m.last_error,
            "mx_member_guid": m.mx_member_guid,
        },
        "events": events,
    }
