"""The Celery application: its two queues and routes, reliability settings, beat schedule,
logging and context hooks.

Late acks plus reject-on-worker-lost so a killed
worker's message is redelivered (our tasks are idempotent), prefetch 1, a hard time limit well
below the Redis visibility timeout (set in all three places kombu reads it), JSON only, no result
backend. ``celery -A worker.celery_app worker`` and ``reauth worker`` start the same thing.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from worker.config import get_settings

#: Explicit, stable task names (messages in flight outlive code refactors).
SCAN_TASK = "reauth.scan"
REGENERATE_TASK = "reauth.regenerate"
DELIVER_TASK = "reauth.dispatch_notifications"
SWEEP_TASK = "reauth.sweep_claims"
PURGE_TASK = "reauth.purge"
APPLY_WEBHOOKS_TASK = "reauth.apply_webhooks"
#: Queue of this service's own tasks (scan, regenerate, sweeps, purge).
QUEUE = "reauth"
#: Queue of the event-side tasks: the outbox relay and the webhook application. Short tasks
#: that someone waits on; on their own queue they never wait behind a regenerate batch.
EVENTS_QUEUE = "reauth.events"
#: Every queue a worker started without ``-Q`` consumes, in the order it serves them: with
#: the Redis transport's ``priority`` order one BRPOP lists the keys in this order, so a
#: message on the events queue is always taken before one on the main queue.
QUEUES = (EVENTS_QUEUE, QUEUE)
#: Which task goes where; every task not named here goes to QUEUE. The names are unchanged,
#: so a message already on QUEUE (sent by an older version) still runs on a worker of QUEUE.
ROUTES = {DELIVER_TASK: EVENTS_QUEUE, APPLY_WEBHOOKS_TASK: EVENTS_QUEUE}


def create_app() -> Celery:
    settings = get_settings()
    broker = settings.broker_url or "memory://"
    app = Celery("reauth", broker=broker, include=["worker.app.tasks"])
    transport = {"visibility_timeout": settings.visibility_timeout}
    heartbeat = settings.claim_heartbeat.total_seconds()
    purge_every = settings.retention_interval.total_seconds()
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(settings.task_time_limit - 10, 1),
        # Kombu sweeps for unacked messages past the visibility timeout only on every 10th
        # restore tick (10 s apart), so a killed worker's batch came back up to 100 s *after*
        # the timeout. Sweep on every tick.
        # queue_order_strategy "priority": a worker of both queues asks for QUEUES in order
        # every time (kombu's default round-robin would rotate the main queue first).
        broker_transport_options={
            **transport,
            "unacked_restore_throttle": 1,
            "queue_order_strategy": "priority",
        },
        result_backend_transport_options=transport,
        visibility_timeout=settings.visibility_timeout,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        task_default_queue=QUEUE,
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        task_routes=[
            {name: {"queue": queue} for name, queue in ROUTES.items()},
            {"reauth.*": {"queue": QUEUE}},
        ],
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "reauth-scan": {
                "task": SCAN_TASK,
                "schedule": settings.scan_interval.total_seconds(),
                "kwargs": {"trigger": "beat"},
                # A scan older than one interval is pointless: the next one is coming.
                "options": {"expires": settings.scan_interval.total_seconds()},
            },
            # Dead workers' leases run out within REAUTH_CLAIM_LEASE of their last heartbeat;
            # these two take their members and outbox rows again within one heartbeat after.
            "reauth-claim-sweeper": {
                "task": SWEEP_TASK,
                "schedule": heartbeat,
                "options": {"expires": heartbeat},
            },
            "reauth-dispatch-sweeper": {
                "task": DELIVER_TASK,
                "schedule": heartbeat,
                "options": {"expires": heartbeat},
            },
            # Retention: expired links cleared, old rows deleted in small batches.
            "reauth-purge": {
                "task": PURGE_TASK,
                "schedule": purge_every,
                "options": {"expires": purge_every},
            },
            # MX webhooks: the task is queued after each intake; this sweeps what a lost
            # message or a retried MX read left pending.
            "reauth-webhooks-sweeper": {
                "task": APPLY_WEBHOOKS_TASK,
                "schedule": heartbeat,
                "kwargs": {"sweep": True},
                "options": {"expires": heartbeat},
            },
        },
    )
    return app


app = create_app()


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Route Celery's own logs through structlog's pipeline instead of Celery's formatter.
    from worker.logging import setup_from_settings

    setup_from_settings(get_settings())


@signals.worker_init.connect
def _tune_gc(**_: Any) -> None:
    # In the parent, before the pool forks: the children inherit the frozen heap and the
    # thresholds (worker.runtime.tune_gc says why).
    import worker.app.tasks  # noqa: F401  (everything a pool process runs, imported once)
    from worker.runtime import tune_gc

    tune_gc()


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    from worker.logging import bind_context, clear_context

    clear_context()
    bind_context(task_id=task_id, task_name=getattr(task, "name", None))


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    from worker.logging import clear_context

    clear_context()


@signals.worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    # Each prefork child traces on its own (an exporter's thread does not survive a fork);
    # a no-op unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
    from worker import tracing

    tracing.setup("reauth-worker")


@signals.worker_process_init.connect
def _prepare_process(**_: Any) -> None:
    # Each prefork child builds its runtime and its MX client's transport now, while it is
    # idle: otherwise the first batch a child takes pays for them (py-spy saw the SSL context
    # alone at ~5% of a pool process's CPU in the webhook benchmark's burst). Never fatal:
    # a configuration error is reported by the first task, as before.
    import structlog

    from worker.app.tasks import PROCESS

    try:
        rt = PROCESS.get()
        rt.run(rt.mx.prepare())
    except Exception as exc:
        structlog.get_logger(__name__).warning("worker.prepare_failed", error=type(exc).__name__)


@signals.worker_process_shutdown.connect
def _close_runtime(pid: int | None = None, **_: Any) -> None:
    import os

    from worker.app.tasks import PROCESS

    PROCESS.close()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    import structlog

    from worker import metrics

    settings = get_settings()
    if not settings.reconnect_enabled:
        structlog.get_logger(__name__).warning(
            "reconnect_links_off",
            why="REAUTH_PUBLIC_URL or REAUTH_RECONNECT_SECRETS is not set",
            effect="messages carry oauth_window_uri only, no reconnect_url",
        )
    port = settings.metrics_port
    if port:
        metrics.serve(port)
