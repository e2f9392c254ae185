"""The job bodies: what each task does, as functions of an explicit runtime.

The Celery tasks (:mod:`worker.app.tasks`) and the inline follow-ups call these, so an inline
run goes through exactly the code a worker runs. Each job calls one service and hands work on
through ``rt.followups`` only after the service has committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from worker import failpoints, tracing, waits
from worker.core.policy import Reason
from worker.runtime import Runtime
from worker.service import deliver as delivery
from worker.service import retention
from worker.service import webhooks as webhook_events
from worker.service.regenerate import BatchResult, regenerate_batch
from worker.service.scan import ScanResult, run_scan, sweep

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


def scan(
    rt: Runtime,
    *,
    clock: Clock,
    trigger: str = "beat",
    limit: int | None = None,
    reason: Reason | None = None,
) -> ScanResult:
    """Claim due members; each claimed page becomes one regenerate batch."""

    def hand_on(ids: list[int], owner: str) -> None:
        rt.followups.regenerate(ids, owner, force=False, trigger="scan")

    with tracing.span("reauth.scan", {"reauth.trigger": trigger}) as current:
        result = run_scan(rt, hand_on, clock=clock, trigger=trigger, limit=limit, reason=reason)
        if current is not None:
            current.set_attribute("reauth.claimed", result.claimed)
        return result


def sweep_claims(rt: Runtime, *, clock: Clock) -> ScanResult | None:
    """Rescan when claims ran out (a worker died mid-batch); None when there were none."""

    def hand_on(ids: list[int], owner: str) -> None:
        rt.followups.regenerate(ids, owner, force=False, trigger="scan")

    return sweep(rt, hand_on, clock=clock)


def regenerate(
    rt: Runtime,
    ids: list[int],
    owner: str,
    *,
    clock: Clock,
    force: bool = False,
    trigger: str = "scan",
    task_id: str | None = None,
) -> BatchResult:
    """Generate fresh URIs for a claimed batch; start a delivery when it queued notifications."""
    with tracing.span(
        "reauth.regenerate",
        {"reauth.trigger": trigger, "reauth.batch_size": len(ids), "reauth.force": force},
    ):
        result = regenerate_batch(
            rt, ids, owner, clock=clock, force=force, trigger=trigger, task_id=task_id
        )
        failpoints.hit("after_commit")
        if result.notifications:
            rt.followups.deliver()
        return result


def deliver(rt: Runtime, *, owner: str, clock: Clock) -> dict[str, Any]:
    """One delivery pass over the outbox (after batch commits, and on beat as a sweeper)."""
    rt.followups.delivery_started()
    with tracing.span("reauth.deliver") as current:
        t0 = time.perf_counter()
        totals = delivery.deliver(rt, clock=clock, owner=owner)
        waits.note("relay_pass", time.perf_counter() - t0)  # no-op unless bench.waits
        if current is not None:
            current.set_attribute("reauth.sent", int(totals.get("sent", 0)))
    if totals.get("more") and not rt.inline:
        # A backlog larger than one pass: queue the next pass (coalesced through the relay's
        # flag) instead of leaving the rest to the beat sweeper's next tick.
        try:
            rt.followups.deliver()
        except Exception as exc:  # broker down: the beat sweeper follows
            log.warning("deliver.queue_failed", error=type(exc).__name__)
    return totals


def purge(rt: Runtime, *, clock: Clock) -> retention.PurgeResult:
    """Clear expired links and delete old rows; stops at half the task time limit (the next
    beat goes on where it stopped: every batch has committed)."""
    deadline = time.monotonic() + rt.settings.task_time_limit / 2
    return retention.purge(rt, clock=clock, deadline=deadline)


def apply_webhooks(rt: Runtime, *, clock: Clock, sweep: bool = False) -> webhook_events.ApplyResult:
    """Apply pending MX webhook events; members an event made due get a regenerate batch of
    their own at once (trigger ``webhook``), not at the next scan. ``sweep`` (beat) returns
    without work when nothing is pending."""
    rt.followups.webhooks_started()
    if sweep and not webhook_events.pending(rt, clock()):
        return webhook_events.ApplyResult()

    def hand_on(ids: list[int]) -> None:
        claimed, owner = webhook_events.claim_due(rt, ids, clock())
        if claimed:
            rt.followups.regenerate(claimed, owner, force=False, trigger="webhook")

    def more() -> None:
        try:
            rt.followups.apply_webhooks()
        except Exception as exc:  # broker down: this batch goes on, the beat sweeper follows
            log.warning("webhook.queue_failed", error=type(exc).__name__)

    with tracing.span("reauth.apply_webhooks", {"reauth.sweep": sweep}):
        if rt.inline:
            return webhook_events.apply_pending(rt, clock=clock, hand_on=hand_on)
        # With Celery, one batch per task: a full batch queues the next apply task (coalesced
        # through its flag) before its MX reads, so another pool process takes the next batch
        # meanwhile, and the regenerate batches this one hands on queue between apply tasks
        # instead of waiting until every pending event is applied.
        return webhook_events.apply_pending(
            rt, clock=clock, hand_on=hand_on, max_batches=1, more=more
        )
