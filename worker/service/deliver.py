"""One delivery pass: refresh stale links, then relay due outbox rows, until drained.

The relay (:mod:`worker.notify.relay`) never delivers a stale link; the refresh step
(:mod:`worker.service.refresh`) regenerates those first. A pass drains at most
:data:`MAX_ROUNDS` batches so a task never runs unbounded; a pass that stops there with a full
last batch says so (``more``) and the job queues the next pass at once (the beat sweeper is only
the backstop), so a large backlog drains without waiting for beat.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from worker import metrics
from worker.notify.relay import deliver_batch
from worker.runtime import Runtime
from worker.service.refresh import refresh_stale
from worker.store import notifications
from worker.store.db import session_scope

MAX_ROUNDS = 20


def deliver(rt: Runtime, *, clock: Callable[[], datetime], owner: str) -> dict[str, Any]:
    """Deliver due outbox rows batch by batch (refreshing stale links first) until drained."""
    totals: dict[str, Any] = {"refreshed": 0}
    for _ in range(MAX_ROUNDS):
        totals["refreshed"] += refresh_stale(rt, clock=clock, task_id=owner)
        result = deliver_batch(
            settings=rt.settings, sessions=rt.sessions, sink=rt.sink, now=clock(), owner=owner
        )
        for key, value in result.as_dict().items():
            totals[key] = totals.get(key, 0) + value
        if result.claimed < rt.settings.notify_batch_size:
            break
    else:
        # Stopped by the round cap on a full batch: rows are probably still due.
        totals["more"] = True
    with session_scope(rt.sessions) as s:
        metrics.OUTBOX_BACKLOG.set(notifications.backlog(s))
    metrics.NOTIFICATIONS.labels(result="sent").inc(totals.get("sent", 0))
    metrics.NOTIFICATIONS.labels(result="dead").inc(totals.get("dead", 0))
    return totals
