"""Celery tasks: thin shells that turn ids into a call of one job.

No logic lives here. Each task gets this worker process's runtime (built on first use, after the
prefork fork, closed when the process shuts down), reads the clock at the edge and calls a job
from :mod:`worker.app.jobs`.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Task

from worker.app import jobs
from worker.app.celery_app import (
    APPLY_WEBHOOKS_TASK,
    DELIVER_TASK,
    PURGE_TASK,
    REGENERATE_TASK,
    SCAN_TASK,
    SWEEP_TASK,
    app,
)
from worker.clock import utc_now
from worker.config import get_settings
from worker.core.policy import Reason
from worker.errors import StorageError
from worker.runtime import Runtime


class ProcessRuntime:
    """This worker process's runtime: built on first use, closed at process shutdown."""

    def __init__(self) -> None:
        self._rt: Runtime | None = None
        self._lock = threading.Lock()

    def get(self) -> Runtime:
        with self._lock:
            if self._rt is None:
                self._rt = Runtime(get_settings())
            return self._rt

    def close(self) -> None:
        with self._lock:
            if self._rt is not None:
                self._rt.close()
                self._rt = None


#: One per worker process (prefork children each have their own after the fork).
PROCESS = ProcessRuntime()


@app.task(name=SCAN_TASK, bind=True, acks_late=False)
def scan(
    self: Task[Any, Any],
    trigger: str = "beat",
    limit: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Claim due members and enqueue regenerate batches.

    Acked early on purpose: a scan lost with its worker is simply run by the next beat tick.
    """
    return jobs.scan(
        PROCESS.get(),
        clock=utc_now,
        trigger=trigger,
        limit=limit,
        reason=Reason(reason) if reason else None,
    ).as_dict()


@app.task(name=SWEEP_TASK, bind=True, acks_late=False)
def sweep_claims(self: Task[Any, Any]) -> dict[str, Any] | None:
    """Rescan at once when a dead worker's claims have run out (beat, every heartbeat)."""
    result = jobs.sweep_claims(PROCESS.get(), clock=utc_now)
    return result.as_dict() if result is not None else None


@app.task(
    name=REGENERATE_TASK,
    bind=True,
    autoretry_for=(StorageError,),
    retry_backoff=5,
    retry_backoff_max=60,
    max_retries=5,
)
def regenerate(
    self: Task[Any, Any],
    member_ids: list[int],
    owner: str,
    force: bool = False,
    trigger: str = "scan",
) -> dict[str, Any]:
    """Generate fresh URIs for a claimed batch and write outcomes plus outbox rows."""
    return jobs.regenerate(
        PROCESS.get(),
        member_ids,
        owner,
        clock=utc_now,
        force=force,
        trigger=trigger,
        task_id=self.request.id,
    ).as_dict()


@app.task(name=DELIVER_TASK, bind=True, autoretry_for=(StorageError,), max_retries=3)
def deliver_notifications(self: Task[Any, Any]) -> dict[str, Any]:
    """Deliver pending outbox rows (after each batch commit, and on beat as a sweeper)."""
    return jobs.deliver(PROCESS.get(), owner=self.request.id or "deliver", clock=utc_now)


@app.task(name=PURGE_TASK, bind=True, acks_late=False)
def purge(self: Task[Any, Any]) -> dict[str, Any]:
    """Retention (beat, every REAUTH_RETENTION_INTERVAL). Acked early: a lost run is simply
    done by the next tick."""
    return jobs.purge(PROCESS.get(), clock=utc_now).as_dict()


@app.task(name=APPLY_WEBHOOKS_TASK, bind=True, autoretry_for=(StorageError,), max_retries=3)
def apply_webhooks(self: Task[Any, Any], sweep: bool = False) -> dict[str, Any]:
    """Apply pending MX webhook events (queued after intake; on beat as a sweeper)."""
    return jobs.apply_webhooks(PROCESS.get(), clock=utc_now, sweep=sweep).as_dict()
