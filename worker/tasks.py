"""Celery tasks: thin shells that turn ids into a call of one service function.

No logic lives here. Each task reads the clock, opens the process runtime, calls the service and
schedules follow-ups only after the service has committed.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from worker import failpoints
from worker.celery_app import DISPATCH_TASK, REGENERATE_TASK, SCAN_TASK, app
from worker.clock import utc_now
from worker.config import get_settings
from worker.errors import StorageError
from worker.runtime import Runtime

log = structlog.get_logger(__name__)

_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, built on first use (after the prefork fork)."""
    global _runtime  # noqa: PLW0603 - one runtime per worker process, by design
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def set_runtime(rt: Runtime | None) -> None:
    """Install a runtime (inline runs and tests reuse theirs)."""
    global _runtime  # noqa: PLW0603
    _runtime = rt


def close_runtime() -> None:
    global _runtime  # noqa: PLW0603
    if _runtime is not None:
        _runtime.close()
        _runtime = None


class Followups:
    """How a task hands work on: Celery messages by default, direct calls when run inline.

    Inline runs (``reauth scan --inline``, the demo) swap in :class:`InlineFollowups`, so they go
    through the very same task bodies without a broker.
    """

    def regenerate(self, ids: list[int], owner: str, *, force: bool, trigger: str) -> None:
        app.send_task(
            REGENERATE_TASK, args=[ids, owner], kwargs={"force": force, "trigger": trigger}
        )

    def dispatch(self) -> None:
        # Coalesce: while a relay task is queued and not yet started, later batches need not
        # queue another; it will see their rows. The relay clears the flag when it starts, so a
        # commit after that queues a fresh one. Without Redis, or if Redis fails, always queue.
        if _queued_flag(set_it=True):
            app.send_task(DISPATCH_TASK)


#: Redis key meaning "a relay task is queued and has not started yet".
DISPATCH_QUEUED_KEY = "reauth:dispatch:queued"
_flag_client: Any = None


def _queued_flag(*, set_it: bool) -> bool:
    """Set (True when we set it, i.e. nobody else had) or clear the relay-queued flag."""
    global _flag_client  # noqa: PLW0603 - one connection pool per process
    import redis

    url = runtime().settings.redis_url
    if url is None:
        return True
    try:
        if _flag_client is None:
            _flag_client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        if set_it:
            # Expires so that a lost task message cannot block relays for more than a minute.
            return bool(_flag_client.set(DISPATCH_QUEUED_KEY, 1, nx=True, ex=60))
        _flag_client.delete(DISPATCH_QUEUED_KEY)
    except (redis.RedisError, OSError) as exc:  # Redis trouble: fall back to always queueing
        log.warning("dispatch_flag_unavailable", error=type(exc).__name__)
    return True


class InlineFollowups(Followups):
    def regenerate(self, ids: list[int], owner: str, *, force: bool, trigger: str) -> None:
        regenerate.run(ids, owner, force=force, trigger=trigger)

    def dispatch(self) -> None:
        dispatch_notifications.run()


followups: Followups = Followups()


def set_followups(f: Followups) -> None:
    global followups  # noqa: PLW0603
    followups = f


def scan_dispatch(ids: list[int], owner: str) -> None:
    """Scan dispatcher: one ``reauth.regenerate`` batch per claimed page."""
    followups.regenerate(ids, owner, force=False, trigger="scan")


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
    from worker.policy import Reason
    from worker.scan import run_scan

    return run_scan(
        runtime(), scan_dispatch, clock=utc_now, trigger=trigger, limit=limit,
        reason=Reason(reason) if reason else None,
    ).as_dict()  # fmt: skip


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
    from worker.pipeline import regenerate_batch

    result = regenerate_batch(
        runtime(), member_ids, owner, clock=utc_now, force=force, trigger=trigger,
        task_id=self.request.id,
    )  # fmt: skip
    failpoints.hit("after_commit")
    if result.notifications:
        followups.dispatch()
    return result.as_dict()


@app.task(name=DISPATCH_TASK, bind=True, autoretry_for=(StorageError,), max_retries=3)
def dispatch_notifications(self: Task[Any, Any]) -> dict[str, Any]:
    """Deliver pending outbox rows (after each batch commit, and on beat as a sweeper)."""
    from worker.delivery import dispatch

    _queued_flag(set_it=False)
    return dispatch(runtime(), clock=utc_now, owner=self.request.id or "dispatch")
