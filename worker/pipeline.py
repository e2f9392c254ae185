"""The regenerate step: claimed members → policy → MX (concurrently) → one transaction.

:func:`regenerate_batch` is what the ``reauth.regenerate`` task (and ``--inline`` runs) call.
It is idempotent: a redelivered batch finds its claim gone (nothing is written) or finds the
outbox row already there (the unique idempotency key), so no (member, episode, reminder) is ever
notified twice. The outbox row is written in the same transaction as the URI it carries.

:func:`refresh_links` regenerates the URI of outbox rows that grew stale before delivery.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select

from models import Member, Notification
from worker import failpoints, metrics
from worker import repository as repo
from worker.db import session_scope
from worker.errors import (
    MemberNotFound,
    MxConfigurationError,
    MxError,
    MxPermanentError,
    NotOAuthCapable,
    RateLimited,
)
from worker.logging import fingerprint_uri
from worker.mx import MxClient, OAuthRequest, OAuthWindow
from worker.notify.contract import build_message, format_time, idempotency_key
from worker.policy import (
    IN_EPISODE,
    Channel,
    Generate,
    MemberSnapshot,
    Outcome,
    Reason,
    State,
    Update,
    after_outcome,
    channel_params,
    decide,
)
from worker.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass
class CallResult:
    """One MX call: a window, an error, or skipped (the batch was stopped before it ran)."""

    window: OAuthWindow | None = None
    error: MxError | None = None
    latency_ms: float | None = None
    skipped: bool = False


@dataclass
class BatchResult:
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    notifications: int = 0
    configuration_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "outcomes": dict(self.outcomes),
            "notifications": self.notifications,
            "configuration_error": self.configuration_error,
        }


def outcome_of(error: MxError | None) -> Outcome:
    """Map the client's error tree onto the policy's outcomes."""
    if error is None:
        return Outcome.SUCCESS
    if isinstance(error, NotOAuthCapable):
        return Outcome.NOT_OAUTH_CAPABLE
    if isinstance(error, MemberNotFound):
        return Outcome.MEMBER_NOT_FOUND
    if isinstance(error, MxPermanentError):
        return Outcome.BAD_REQUEST
    if isinstance(error, MxConfigurationError):
        return Outcome.CONFIGURATION
    return Outcome.TRANSIENT


async def call_all(
    mx: MxClient, requests: Sequence[OAuthRequest], concurrency: int
) -> list[CallResult]:
    """Call MX for every request, at most ``concurrency`` at a time.

    A configuration error (401/403 after a session refresh) stops the batch: calls not yet
    started are skipped, since they would fail the same way and burn quota.
    """
    gate = asyncio.Semaphore(concurrency)
    stop = asyncio.Event()

    async def one(req: OAuthRequest) -> CallResult:
        async with gate:
            if stop.is_set():
                return CallResult(skipped=True)
            started = time.perf_counter()
            try:
                window = await mx.generate_oauth_window_uri(req)
            except MxError as exc:
                if isinstance(exc, MxConfigurationError):
                    stop.set()
                return CallResult(error=exc, latency_ms=_ms(started))
            failpoints.hit("during_mx_calls")
            return CallResult(window=window, latency_ms=_ms(started))

    return list(await asyncio.gather(*(one(r) for r in requests)))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _request_for(m: Member, g: Generate) -> OAuthRequest:
    return OAuthRequest(
        member_guid=m.member_guid,
        user_guid=m.user_guid,
        user_id=m.user_id,
        referral_source=g.params.referral_source,
        skip_aggregation=g.skip_aggregation,
        client_redirect_url=g.params.client_redirect_url,
        ui_message_webview_url_scheme=g.params.ui_message_webview_url_scheme,
    )


def _attempt_row(
    m: Member,
    g: Generate,
    res: CallResult,
    outcome: Outcome,
    *,
    mx_api: str,
    trigger: str,
    task_id: str | None,
    now: datetime,
) -> dict[str, Any]:
    err = res.error
    return {
        "member_id": m.id,
        "episode": g.episode,
        "reminder": g.reminder,
        "trigger": trigger,
        "reason": g.reason.value,
        "mx_api": mx_api,
        "referral_source": g.params.referral_source,
        "skip_aggregation": g.skip_aggregation,
        "skip_aggregation_why": g.skip_why.value,
        "redirect_used": g.params.client_redirect_url is not None,
        "outcome": outcome.value,
        "http_status": err.status if err is not None else 200,
        "error_class": type(err).__name__ if err is not None else None,
        "error_message": str(err)[:500] if err is not None else None,
        "latency_ms": res.latency_ms,
        "task_id": task_id,
        "created_at": now,
    }


def regenerate_batch(
    rt: Runtime,
    ids: Sequence[int],
    owner: str,
    *,
    clock: Callable[[], datetime],
    force: bool = False,
    trigger: str = "scan",
    task_id: str | None = None,
) -> BatchResult:
    """Process one claimed batch. Safe to run twice with the same arguments.

    1. decide every member; those needing no MX call are written and released at once;
    2. call MX for the rest, outside any transaction;
    3. write outcomes, URIs and outbox rows in one transaction, only for members still ours.
    """
    result = BatchResult()
    todo = _decide(rt, ids, owner, clock(), force=force, result=result)
    if not todo:
        return result
    requests = [_request_for(m, g) for m, _, g in todo]
    calls = rt.run(call_all(rt.mx, requests, rt.settings.mx_max_concurrency))
    failpoints.hit("after_mx_calls")
    _write(rt, todo, calls, owner, clock(), trigger=trigger, task_id=task_id, result=result)
    config_errors = [r.error for r in calls if isinstance(r.error, MxConfigurationError)]
    if config_errors:
        result.configuration_error = f"{type(config_errors[0]).__name__}: {config_errors[0]}"
        # Stop the line, not just this batch: every worker and scan pauses MX calls for a while
        # instead of spending quota on requests that fail the same way.
        with session_scope(rt.sessions) as s:
            repo.pause_mx(
                s, until=clock() + rt.settings.backoff_base, why=result.configuration_error
            )
        log.error(
            "mx_configuration_error",
            error=result.configuration_error,
            released=result.outcomes["skipped"] + result.outcomes[Outcome.CONFIGURATION.value],
            hint="check REAUTH_MX_CLIENT_ID, REAUTH_MX_API_KEY, the MX environment, IP allow-list",
        )
    return result


Todo = list[tuple[Member, MemberSnapshot, Generate]]


def _decide(
    rt: Runtime, ids: Sequence[int], owner: str, now: datetime, *, force: bool, result: BatchResult
) -> Todo:
    cfg = rt.policy
    todo: Todo = []
    with session_scope(rt.sessions) as s:
        paused = repo.mx_paused(s, now)
        if paused is not None:
            # A configuration error paused MX calls: hand the claims back untouched.
            result.claimed = repo.release_claims(s, ids, owner)
            result.outcomes["paused"] += result.claimed
            result.configuration_error = f"MX calls paused: {paused}"
            return todo
        members = repo.load_claimed(s, ids, owner, renew_until=now + rt.settings.claim_lease)
        result.claimed = len(members)
        updates: list[dict[str, Any]] = []
        wanted: Todo = []
        ended: list[int] = []
        for m in members:
            snap = repo.snapshot(m)
            decision = decide(snap, now, cfg, force=force)
            if isinstance(decision, Update):
                columns = repo.fields_to_columns(decision.fields)
                del columns["last_error"]  # a decision without an MX call keeps the last error
                updates.append({"id": m.id, **columns})
                if snap.state in IN_EPISODE and decision.fields.state is State.IDLE:
                    ended.append(m.id)
                result.outcomes["no_call"] += 1
            else:
                wanted.append((m, snap, decision))
        repo.cancel_pending(s, ended, now)
        done = repo.existing_keys(
            s, (idempotency_key(m.member_guid, g.episode, g.reminder) for m, _, g in wanted)
        )
        for m, snap, g in wanted:
            if idempotency_key(m.member_guid, g.episode, g.reminder) in done:
                # A redelivered or overlapping batch already notified this reminder.
                fields = after_outcome(snap, g, Outcome.DUPLICATE, now, cfg)
                updates.append({"id": m.id, **repo.fields_to_columns(fields)})
                result.outcomes[Outcome.DUPLICATE.value] += 1
            else:
                todo.append((m, snap, g))
        repo.update_members(s, updates)
    return todo


def _write(
    rt: Runtime,
    todo: Todo,
    calls: list[CallResult],
    owner: str,
    now: datetime,
    *,
    trigger: str,
    task_id: str | None,
    result: BatchResult,
) -> None:
    cfg = rt.policy
    with session_scope(rt.sessions) as s:
        still_ours = repo.still_claimed(s, [m.id for m, _, _ in todo], owner)
        updates: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        released: list[int] = []
        for (m, snap, g), res in zip(todo, calls, strict=True):
            if m.id not in still_ours:
                # Our lease ran out and another worker took the member: it owns the outcome.
                result.outcomes["lease_lost"] += 1
                continue
            if res.skipped:
                released.append(m.id)
                result.outcomes["skipped"] += 1
                continue
            outcome = outcome_of(res.error)
            result.outcomes[outcome.value] += 1
            metrics.ATTEMPTS.labels(outcome=outcome.value).inc()
            if res.latency_ms is not None:
                metrics.MX_LATENCY.observe(res.latency_ms / 1000)
            attempts.append(
                _attempt_row(
                    m, g, res, outcome,
                    mx_api=rt.settings.mx_api.value, trigger=trigger, task_id=task_id, now=now,
                )
            )  # fmt: skip
            fields = after_outcome(
                snap,
                g,
                outcome,
                now,
                cfg,
                retry_after=res.error.retry_after if isinstance(res.error, RateLimited) else None,
                error=f"{type(res.error).__name__}: {res.error}" if res.error else None,
            )
            row = {"id": m.id, **repo.fields_to_columns(fields)}
            if fields.state is State.GAVE_UP:
                log.error(
                    "member_gave_up", member_guid=m.member_guid, episode=g.episode,
                    reminder=g.reminder, attempts=fields.attempts, last_error=fields.last_error,
                )  # fmt: skip
            if res.window is not None:
                w = res.window
                row.update(oauth_window_uri=w.oauth_window_uri, uri_generated_at=w.generated_at)
                if w.member_guid != m.member_guid:
                    row["mx_member_guid"] = w.member_guid
                outbox.append(_outbox_row(m, g, w, now))
            updates.append(row)
            _log_member(m, g, outcome, res)
        repo.update_members(s, updates)
        repo.add_attempts(s, attempts)
        result.notifications = repo.insert_notifications(s, outbox)
        repo.release_claims(s, released, owner)


def _outbox_row(m: Member, g: Generate, w: OAuthWindow, now: datetime) -> dict[str, Any]:
    nid = uuid.uuid4()
    return {
        "id": nid,
        "idempotency_key": idempotency_key(m.member_guid, g.episode, g.reminder),
        "member_id": m.id,
        "payload": build_message(
            notification_id=nid,
            user_guid=m.user_guid,
            member_guid=m.member_guid,
            institution_code=m.institution_code,
            reason=g.reason.value,
            oauth_window_uri=w.oauth_window_uri,
            generated_at=w.generated_at,
            episode=g.episode,
            reminder=g.reminder,
            skip_aggregation=g.skip_aggregation,
            channel=g.params.referral_source,
        ),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _log_member(m: Member, g: Generate, outcome: Outcome, res: CallResult) -> None:
    """One canonical line per member processed."""
    event = log.info if outcome in (Outcome.SUCCESS, Outcome.TRANSIENT) else log.warning
    event(
        "member_processed",
        member_guid=m.member_guid,
        reason=g.reason.value,
        episode=g.episode,
        reminder=g.reminder,
        outcome=outcome.value,
        skip_aggregation=g.skip_aggregation,
        skip_why=g.skip_why.value,
        channel=g.params.referral_source,
        latency_ms=res.latency_ms,
        http_status=res.error.status if res.error else 200,
        link=fingerprint_uri(res.window.oauth_window_uri) if res.window else None,
    )


# --- stale links ----------------------------------------------------------------------------


def refresh_links(
    rt: Runtime,
    notification_ids: Sequence[uuid.UUID],
    *,
    clock: Callable[[], datetime],
    task_id: str | None = None,
) -> int:
    """Regenerate the URI of outbox rows before delivery (same member, episode and reminder).

    The new URI replaces the old one in the row's payload and on the member, and an attempt row
    with trigger ``refresh`` records the call. Rows whose call fails stay as they are; the relay
    holds them back rather than deliver a stale link. Returns how many were refreshed.
    """
    cfg = rt.policy
    gens: list[Generate] = []
    requests: list[OAuthRequest] = []
    with session_scope(rt.sessions) as s:
        rows = list(
            s.execute(
                select(Notification, Member)
                .join(Member, Member.id == Notification.member_id)
                .where(Notification.id.in_(notification_ids))
            )
        )
        for n, m in rows:
            p = n.payload
            g = Generate(
                reason=Reason(p["reason"]),
                episode=int(p["episode"]),
                episode_started_at=m.episode_started_at or clock(),
                reminder=int(p["reminder"]),
                skip_aggregation=bool(p["skip_aggregation"]),
                skip_why=repo.first_skip_why(s, m.id, int(p["episode"]), int(p["reminder"])),
                params=channel_params(Channel(p.get("channel", m.channel)), cfg),
                new_episode=False,
            )
            gens.append(g)
            requests.append(_request_for(m, g))
    if not rows:
        return 0
    calls = rt.run(call_all(rt.mx, requests, rt.settings.mx_max_concurrency))
    now = clock()
    refreshed = 0
    with session_scope(rt.sessions) as s:
        attempts = []
        for (n, m), g, res in zip(rows, gens, calls, strict=True):
            if res.skipped:
                continue
            outcome = outcome_of(res.error)
            attempts.append(
                _attempt_row(
                    m, g, res, outcome,
                    mx_api=rt.settings.mx_api.value, trigger="refresh", task_id=task_id, now=now,
                )
            )  # fmt: skip
            if res.window is None:
                continue
            payload = dict(n.payload)
            payload["oauth_window_uri"] = res.window.oauth_window_uri
            payload["generated_at"] = format_time(res.window.generated_at)
            fresh = s.get(Notification, n.id)
            member = s.get(Member, m.id)
            if fresh is None or member is None or fresh.status != "pending":
                continue
            fresh.payload = payload
            member.oauth_window_uri = res.window.oauth_window_uri
            member.uri_generated_at = res.window.generated_at
            refreshed += 1
        repo.add_attempts(s, attempts)
    log.info("links_refreshed", requested=len(rows), refreshed=refreshed)
    return refreshed
