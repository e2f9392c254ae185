"""The periodic scan: claim due members page by page and hand each page on.

Safe when fired twice at once (two beats, beat plus ``reauth scan``): a scan first takes the
singleton lock (:func:`worker.store.locks.scan_lock`) and a second scan that cannot take it
returns at once. Even without the lock two scans could not take the same member: claims are
exclusive (:mod:`worker.store.leases`).

Pages are claimed in (next_attempt_at, id) keyset order and committed *before* they are handed to
the hand-on (Celery ``send_task`` or an in-process call), so a message never refers to a claim
that is not in the database. A hand-on that fails leaves the claim to expire and be retaken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from worker import failpoints, metrics
from worker.core.policy import Generate, Reason, State, decide, reason_for
from worker.runtime import Runtime
from worker.store import audit, leases, locks, members, notifications
from worker.store.db import read_only_session, session_scope

log = structlog.get_logger(__name__)

#: Hands a claimed page (member ids, claim owner) to whoever processes it.
HandOn = Callable[[list[int], str], None]


@dataclass
class ScanResult:
    skipped_lock: bool = False
    paused: str | None = None
    claimed: int = 0
    batches: int = 0
    duration_s: float = 0.0
    due_at_start: int = 0
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped_lock": self.skipped_lock,
            "paused": self.paused,
            "claimed": self.claimed,
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "due_at_start": self.due_at_start,
            "interrupted": self.interrupted,
        }


def run_scan(
    rt: Runtime,
    hand_on: HandOn,
    *,
    clock: Callable[[], datetime],
    trigger: str = "beat",
    limit: int | None = None,
    reason: Reason | None = None,
) -> ScanResult:
    """Claim every due member (at most ``limit``) in batches and hand each batch on."""
    started = time.perf_counter()
    now = clock()
    result = ScanResult()
    run_owner = leases.new_owner()
    with locks.scan_lock(rt.engine, now=now, owner=run_owner) as got:
        if not got:
            log.info("scan_skipped", why="another scan holds the lock", trigger=trigger)
            result.skipped_lock = True
            _record(rt, result, trigger=trigger, started=now, clock=clock)
            return result
        with session_scope(rt.sessions) as s:
            paused = locks.mx_paused(s, now)
            result.due_at_start = members.due_count(s, now)
            _export_fleet_gauges(s, paused=paused is not None)
        if paused is not None:
            log.error("scan_paused", why=paused, due=result.due_at_start, trigger=trigger)
            result.paused = paused
            _record(rt, result, trigger=trigger, started=now, clock=clock)
            return result
        metrics.MEMBERS_DUE.set(result.due_at_start)
        try:
            _claim_pages(rt, hand_on, now=now, limit=limit, reason=reason, result=result)
        except KeyboardInterrupt:
            # Ctrl-C on an inline scan: the batch being processed gave its claims back (see
            # regenerate_batch); say so in the scan record, then let the interrupt through.
            result.interrupted = True
            result.duration_s = time.perf_counter() - started
            _record(rt, result, trigger=trigger, started=now, clock=clock)
            log.warning("scan_interrupted", trigger=trigger, **result.as_dict())
            raise
    result.duration_s = time.perf_counter() - started
    metrics.SCAN_DURATION.observe(result.duration_s)
    _record(rt, result, trigger=trigger, started=now, clock=clock)
    log.info("scan_finished", trigger=trigger, **result.as_dict())
    return result


def _claim_pages(
    rt: Runtime,
    hand_on: HandOn,
    *,
    now: datetime,
    limit: int | None,
    reason: Reason | None,
    result: ScanResult,
) -> None:
    """Claim pages in keyset order and hand each on, until none is due or ``limit`` is met."""
    after: tuple[datetime, int] | None = None
    size = rt.settings.batch_size
    while limit is None or result.claimed < limit:
        want = size if limit is None else min(size, limit - result.claimed)
        owner = leases.new_owner()
        with session_scope(rt.sessions) as s:
            if reason is None:
                page = members.claim_due(
                    s,
                    now=now,
                    owner=owner,
                    lease=rt.handoff_lease,
                    limit=want,
                    after=after,
                )
                ids, after = page.ids, page.last
            else:
                ids, after, exhausted = _claim_for_reason(
                    rt, s, now=now, owner=owner, want=want, after=after, reason=reason
                )
                if not ids and not exhausted:
                    continue
        if not ids:
            break
        failpoints.hit("after_claim")
        try:
            hand_on(ids, owner)
        except KeyboardInterrupt:
            # Give the page back now rather than leave it claimed for a whole lease (claims a
            # batch already wrote are released already; this touches only what is still ours).
            with session_scope(rt.sessions) as s:
                members.release_claims(s, ids, owner)
            raise
        result.claimed += len(ids)
        result.batches += 1
        if after is None:
            break


def sweep(rt: Runtime, hand_on: HandOn, *, clock: Callable[[], datetime]) -> ScanResult | None:
    """Scan at once when a dead worker's claims have run out; otherwise do nothing (None).

    Beat runs this every REAUTH_CLAIM_HEARTBEAT, so a killed batch's members are taken again
    within one heartbeat of their lease running out instead of at the next scan. The check is
    one indexed read; no lock is taken and no scan row is written when there is nothing to do.
    """
    with read_only_session(rt.engine) as s:
        if not members.has_expired_claims(s, clock()):
            return None
    log.info("claims_expired", action="scan")
    return run_scan(rt, hand_on, clock=clock, trigger="sweep")


def _record(
    rt: Runtime,
    result: ScanResult,
    *,
    trigger: str,
    started: datetime,
    clock: Callable[[], datetime],
) -> None:
    """Keep a row per scan (also skipped ones) for `reauth status`."""
    with session_scope(rt.sessions) as s:
        audit.record_scan(
            s,
            trigger=trigger,
            started_at=started,
            finished_at=clock(),
            duration_s=result.duration_s,
            claimed=result.claimed,
            batches=result.batches,
            skipped_lock=result.skipped_lock,
            interrupted=result.interrupted,
        )


def _claim_for_reason(
    rt: Runtime,
    s: Session,
    *,
    now: datetime,
    owner: str,
    want: int,
    after: tuple[datetime, int] | None,
    reason: Reason,
) -> tuple[list[int], tuple[datetime, int] | None, bool]:
    """Walk one page of due members and claim those whose reason is ``reason``."""
    page = members.due_page(s, now=now, limit=want, after=after)
    if not page:
        return [], after, True
    cfg = rt.policy
    matching = [m.id for m in page if reason_for(members.snapshot(m), now, cfg) is reason]
    last = page[-1]
    assert last.next_attempt_at is not None
    new_after = (last.next_attempt_at, last.id)
    if not matching:
        return [], new_after, False
    claimed = members.claim_due(
        s,
        now=now,
        owner=owner,
        lease=rt.handoff_lease,
        limit=len(matching),
        member_ids=matching,
    )
    return claimed.ids, new_after, False


@dataclass
class DryRunRow:
    member_guid: str
    reason: str | None
    action: str
    episode: int
    reminder: int | None
    skip_aggregation: bool | None
    skip_why: str | None
    channel: str
    redirect: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _export_fleet_gauges(s: Session, *, paused: bool) -> None:
    """The fleet's state as Prometheus gauges, refreshed once per scan (the singleton that runs
    every REAUTH_SCAN_INTERVAL): MX pause, outbox backlog and dead rows, gave-up members."""
    metrics.MX_PAUSED.set(1 if paused else 0)
    outbox = notifications.counts_by_status(s)
    metrics.OUTBOX_BACKLOG.set(outbox.get("pending", 0))
    metrics.OUTBOX_DEAD.set(outbox.get("dead", 0))
    metrics.MEMBERS_GAVE_UP.set(members.count_in_state(s, State.GAVE_UP))


def dry_run(
    rt: Runtime, *, now: datetime, limit: int | None = None, reason: Reason | None = None
) -> list[DryRunRow]:
    """What a scan would do now, member by member. Reads only: no claim, no write, no MX call."""
    cfg = rt.policy
    rows: list[DryRunRow] = []
    after: tuple[datetime, int] | None = None
    with read_only_session(rt.engine) as s:
        while limit is None or len(rows) < limit:
            page = members.due_page(s, now=now, limit=rt.settings.batch_size, after=after)
            if not page:
                break
            last = page[-1]
            assert last.next_attempt_at is not None
            after = (last.next_attempt_at, last.id)
            for m in page:
                snap = members.snapshot(m)
                d = decide(snap, now, cfg)
                if reason is not None and reason_for(snap, now, cfg) is not reason:
                    continue
                if isinstance(d, Generate):
                    rows.append(
                        DryRunRow(
                            member_guid=m.member_guid,
                            reason=d.reason.value,
                            action="generate",
                            episode=d.episode,
                            reminder=d.reminder,
                            skip_aggregation=d.skip_aggregation,
                            skip_why=d.skip_why.value,
                            channel=d.params.referral_source,
                            redirect=d.params.client_redirect_url is not None,
                        )
                    )
                else:
                    rows.append(
                        DryRunRow(
                            member_guid=m.member_guid,
                            reason=d.fields.reason.value if d.fields.reason else None,
                            action=d.note,
                            episode=d.fields.episode,
                            reminder=None,
                            skip_aggregation=None,
                            skip_why=None,
                            channel=m.channel,
                        )
                    )
                if limit is not None and len(rows) >= limit:
                    break
    return rows
