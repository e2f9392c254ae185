"""Follow-up strategies: how a finished step hands work on.

:class:`CeleryFollowups` sends task messages (the worker's way); :class:`InlineFollowups` calls
the same job functions in this process (``--inline`` CLI runs, the demo, tests). The runtime
picks one when it is built (``Runtime(inline=...)``); nothing swaps them later.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from worker import waits
from worker.clock import utc_now

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = structlog.get_logger(__name__)

#: Redis key meaning "a relay task is queued and has not started yet".
DELIVER_QUEUED_KEY = "reauth:dispatch:queued"
#: Redis key meaning "an apply-webhooks task is queued and has not started yet".
WEBHOOKS_QUEUED_KEY = "reauth:webhooks:queued"


class Followups(Protocol):
    def regenerate(self, ids: list[int], owner: str, *, force: bool, trigger: str) -> None:
        """Process a claimed batch of members."""

    def deliver(self) -> None:
        """Deliver pending outbox rows (after a batch committed some)."""

    def delivery_started(self) -> None:
        """A delivery pass is starting (it will see every row committed before now)."""

    def apply_webhooks(self) -> None:
        """Apply pending webhook events (after an intake committed one)."""

    def webhooks_started(self) -> None:
        """An apply pass is starting (it will see every event committed before now)."""

    def prepare(self) -> None:
        """Get ready to hand work on (imports, connections) before the first hand-on needs it.
        Never raises: a broker that is down now is the first hand-on's problem."""

    def close(self) -> None: ...


def redis_client(url: str) -> Any:
    """The flag's client: short timeouts, since a hand-on must not hang on Redis."""
    import redis

    from worker.redis_options import client_options

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, **client_options())


class CeleryFollowups:
    """Hand work on as Celery messages; coalesce relay tasks through a Redis flag."""

    def __init__(self, rt: Runtime) -> None:
        self._redis_url = rt.settings.redis_url
        self._client: Any = None

    def regenerate(self, ids: list[int], owner: str, *, force: bool, trigger: str) -> None:
        from worker.app.celery_app import REGENERATE_TASK, app

        app.send_task(
            REGENERATE_TASK, args=[ids, owner], kwargs={"force": force, "trigger": trigger}
        )

    def deliver(self) -> None:
        # Coalesce: while a relay task is queued and not yet started, later batches need not
        # queue another; it will see their rows. The relay clears the flag when it starts, so a
        # commit after that queues a fresh one. Without Redis, or if Redis fails, always queue.
        if self._flag(set_it=True):
            from worker.app.celery_app import DELIVER_TASK, app

            app.send_task(DELIVER_TASK)

    def delivery_started(self) -> None:
        self._flag(set_it=False, timed="relay_queued")

    def apply_webhooks(self) -> None:
        # Coalesced like the relay: one queued apply task sees every event committed before
        # it starts.
        if self._flag(set_it=True, key=WEBHOOKS_QUEUED_KEY):
            from worker.app.celery_app import APPLY_WEBHOOKS_TASK, app

            app.send_task(APPLY_WEBHOOKS_TASK)

    def webhooks_started(self) -> None:
        self._flag(set_it=False, key=WEBHOOKS_QUEUED_KEY)

    def prepare(self) -> None:
        # A process that only hands on now and then (``reauth serve``) would otherwise pay for
        # importing the Celery app, its result backend and the first broker connection on its
        # first webhook: measured at 1.5-1.7 s on an idle 2-core machine, by which the first
        # batch of events waited for its apply job. The two connections are tried on their own:
        # one being down does not keep the other cold.
        started = time.perf_counter()
        failed: list[str] = []
        try:
            from worker.app.celery_app import app

            app.backend  # noqa: B018 - imported lazily by the first send_task
            with app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
        except Exception as exc:  # the broker is down: the first hand-on retries
            failed.append(f"broker: {type(exc).__name__}")
        if self._redis_url is not None:
            try:
                client = self._client or redis_client(self._redis_url)
                client.ping()
                self._client = client
            except Exception as exc:  # Redis is down: the flag falls back to always queueing
                failed.append(f"redis: {type(exc).__name__}")
        if failed:
            log.warning("followups.prepare_failed", error=", ".join(failed))
        else:
            log.info("followups.ready", ms=round((time.perf_counter() - started) * 1000, 1))

    def _flag(
        self, *, set_it: bool, key: str = DELIVER_QUEUED_KEY, timed: str | None = None
    ) -> bool:
        """Set (True when we set it, i.e. nobody else had) or clear a task-queued flag.

        The flag holds the time it was set: with the benchmark's wait timings on
        (:mod:`worker.waits`), clearing it as ``timed`` notes how long the task stayed queued.
        """
        import redis

        if self._redis_url is None:
            return True
        try:
            if self._client is None:
                self._client = redis_client(self._redis_url)
            if set_it:
                # Expires so that a lost task message cannot block relays for more than a minute.
                return bool(self._client.set(key, f"{time.time():.6f}", nx=True, ex=60))
            if timed is not None and waits.FILE is not None:
                raw = self._client.getdel(key)
                if raw is not None:
                    waits.note(timed, max(0.0, time.time() - float(raw)))
            else:
                self._client.delete(key)
        except (redis.RedisError, OSError) as exc:  # Redis trouble: fall back to always queueing
            log.warning("dispatch_flag_unavailable", error=type(exc).__name__)
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class InlineFollowups:
    """Run follow-ups at once, in this process, through the same job functions as the tasks."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        #: Outcome counts of every batch run so far, so an inline command can tell whether it
        #: did useful work (``reauth scan --inline`` exits non-zero when a fault stopped it).
        self.outcomes: Counter[str] = Counter()
        self.configuration_error: str | None = None

    def regenerate(self, ids: list[int], owner: str, *, force: bool, trigger: str) -> None:
        from worker.app import jobs

        result = jobs.regenerate(self._rt, ids, owner, force=force, trigger=trigger, clock=utc_now)
        self.outcomes.update(result.outcomes)
        self.configuration_error = result.configuration_error or self.configuration_error

    def deliver(self) -> None:
        from worker.app import jobs

        jobs.deliver(self._rt, owner="inline", clock=utc_now)

    def delivery_started(self) -> None:
        """Nothing to clear: inline delivery is not queued."""

    def apply_webhooks(self) -> None:
        from worker.app import jobs

        jobs.apply_webhooks(self._rt, clock=utc_now)

    def webhooks_started(self) -> None:
        """Nothing to clear: inline applies are not queued."""

    def prepare(self) -> None:
        """Nothing to connect to."""

    def close(self) -> None:
        """Holds nothing."""
