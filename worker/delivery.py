"""Glue between the outbox relay (worker/notify) and the pipeline: one dispatch pass.

The relay delivers; when a row's link is older than REAUTH_LINK_MAX_AGE it first asks
:func:`worker.pipeline.refresh_links` to regenerate it, so no stale one-time URI is delivered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from models import Notification
from worker import metrics
from worker.db import session_scope
from worker.runtime import Runtime

_sinks: dict[int, Any] = {}


def sink_for(rt: Runtime) -> Any:
    """One sink per runtime (it holds connections)."""
    from worker.notify.sinks import build_sink

    key = id(rt)
    if key not in _sinks:
        _sinks[key] = build_sink(rt.settings)
    return _sinks[key]


def close_sinks() -> None:
    for sink in _sinks.values():
        sink.close()
    _sinks.clear()


#: One dispatch call drains at most this many batches, so a task never runs unbounded; the beat
#: sweeper picks up whatever is left.
MAX_ROUNDS = 20


def dispatch(rt: Runtime, *, clock: Callable[[], datetime], owner: str) -> dict[str, Any]:
    """Deliver due outbox rows batch by batch (refreshing stale links first) until drained."""
    from worker.notify.relay import dispatch_pending
    from worker.pipeline import refresh_links

    def refresher(ids: Sequence[uuid.UUID], now: datetime, /) -> None:
        refresh_links(rt, ids, clock=clock)

    totals: dict[str, Any] = {}
    for _ in range(MAX_ROUNDS):
        result = dispatch_pending(
            settings=rt.settings,
            sessions=rt.sessions,
            sink=sink_for(rt),
            now=clock(),
            owner=owner,
            refresher=refresher,
        )
        for key, value in result.as_dict().items():
            totals[key] = totals.get(key, 0) + value
        if result.claimed < rt.settings.notify_batch_size:
            break
    with session_scope(rt.sessions) as s:
        backlog = s.scalar(
            select(func.count()).select_from(Notification).where(Notification.status == "pending")
        )
    metrics.OUTBOX_BACKLOG.set(int(backlog or 0))
    metrics.NOTIFICATIONS.labels(result="sent").inc(totals.get("sent", 0))
    metrics.NOTIFICATIONS.labels(result="dead").inc(totals.get("dead", 0))
    return totals
