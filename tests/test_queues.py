"""The two Celery queues: which task goes where, who consumes what, and in which order.

The order and the upgrade path are checked against the real Redis transport with the consumer a
worker builds (``app.amqp.TaskConsumer`` over the queues it consumes), not against settings.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu import Message
from typer.testing import CliRunner

from worker.app.celery_app import (
    APPLY_WEBHOOKS_TASK,
    DELIVER_TASK,
    EVENTS_QUEUE,
    PURGE_TASK,
    QUEUE,
    QUEUES,
    REGENERATE_TASK,
    SCAN_TASK,
    SWEEP_TASK,
    create_app,
)


def _app(broker: str = "memory://") -> Celery:
    app = create_app()
    app.conf.broker_url = broker
    app.loader.import_default_modules()
    return app


def _queue_of(app: Celery, task: str) -> str:
    name = app.amqp.router.route({}, task)["queue"].name
    assert isinstance(name, str)
    return name


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        (DELIVER_TASK, EVENTS_QUEUE),
        (APPLY_WEBHOOKS_TASK, EVENTS_QUEUE),
        (SCAN_TASK, QUEUE),
        (REGENERATE_TASK, QUEUE),
        (SWEEP_TASK, QUEUE),
        (PURGE_TASK, QUEUE),
    ],
)
def test_each_task_is_routed_to_its_queue(task: str, queue: str) -> None:
    assert _queue_of(_app(), task) == queue


def test_every_registered_task_goes_to_a_queue_a_worker_consumes() -> None:
    app = _app()
    ours = [name for name in app.tasks if name.startswith("reauth.")]
    assert len(ours) >= 6
    assert {_queue_of(app, name) for name in ours} == set(QUEUES)


def test_a_worker_without_q_consumes_both_queues_events_first() -> None:
    """``celery -A worker.celery_app worker`` with no -Q consumes ``consume_from``."""
    assert list(_app().amqp.queues.consume_from) == [EVENTS_QUEUE, QUEUE]


def _worker_argv(monkeypatch: pytest.MonkeyPatch, *args: str) -> list[str]:
    from worker.cli import _register, app, processes

    seen: list[list[str]] = []
    monkeypatch.setattr(processes, "_celery", seen.append)
    _register()
    result = CliRunner().invoke(app, ["worker", *args])
    assert result.exit_code == 0, result.output
    (argv,) = seen
    return argv


def test_reauth_worker_consumes_every_queue_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "-Q" not in _worker_argv(monkeypatch)
    argv = _worker_argv(monkeypatch, "-Q", EVENTS_QUEUE, "-c", "1")
    assert argv[argv.index("-Q") + 1] == EVENTS_QUEUE
    assert argv[argv.index("--concurrency") + 1] == "1"


def _batches_then_events(redis_url: str) -> Celery:
    """Three regenerate batches queued, then three relay passes; the app to consume them."""
    app = _app(redis_url)
    with app.connection_for_write() as conn:
        for i in range(3):
            app.send_task(REGENERATE_TASK, args=[[i]], connection=conn)
        for _ in range(3):
            app.send_task(DELIVER_TASK, connection=conn)
    return app


def _consume(app: Celery, n: int, queues: list[Any] | None = None) -> list[str]:
    """The task names of the next ``n`` messages, one at a time (prefetch 1, acked each)."""
    got: list[str] = []

    def on_message(message: Message) -> None:
        got.append(message.headers["task"])
        message.ack()

    with app.connection_for_read() as conn:
        consumer = app.amqp.TaskConsumer(conn, queues=queues, on_message=on_message)
        consumer.qos(prefetch_count=1)
        with consumer:
            while len(got) < n:
                conn.drain_events(timeout=5)
    return got


@pytest.mark.redis
def test_a_worker_of_both_queues_takes_events_first(redis_url: str) -> None:
    """Three regenerate batches wait, then three relay passes arrive: all three relay passes
    run first. (kombu's default round-robin order would alternate after the first one.)"""
    app = _batches_then_events(redis_url)
    assert _consume(app, 6) == [DELIVER_TASK] * 3 + [REGENERATE_TASK] * 3


@pytest.mark.redis
def test_a_main_worker_told_reauth_first_takes_batches_first(redis_url: str) -> None:
    """docker-compose's main worker (`-Q reauth,reauth.events`, beside the events worker):
    batches first, events only when no batch waits, so a webhook flood cannot starve scans
    and regenerate batches while the events worker keeps the events moving."""
    app = _batches_then_events(redis_url)
    order = [app.amqp.queues[QUEUE], app.amqp.queues[EVENTS_QUEUE]]
    assert _consume(app, 6, queues=order) == [REGENERATE_TASK] * 3 + [DELIVER_TASK] * 3


@pytest.mark.redis
def test_an_event_task_left_on_the_main_queue_by_an_older_version_still_runs(
    redis_url: str,
) -> None:
    """Upgrade: a relay pass queued on ``reauth`` before the split reaches a worker of
    ``reauth`` under the same name, which the new version still registers."""
    app = _app(redis_url)
    with app.connection_for_write() as conn:
        app.send_task(DELIVER_TASK, queue=QUEUE, connection=conn)
    main_only = [app.amqp.queues[QUEUE]]
    assert _consume(app, 1, queues=main_only) == [DELIVER_TASK]
    assert DELIVER_TASK in app.tasks
