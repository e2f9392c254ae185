"""Notification sinks: where the outbox relay hands messages over, and :func:`build_sink`.

A sink owns one transport (a Redis stream, a Celery queue, a JSON-lines file; the signed webhook
lives in :mod:`worker.notify.webhook`). It takes a batch of contract messages and answers one
:class:`DeliveryResult` per message, in order, so one message that fails never decides the fate
of the others. Every library error is translated here into :class:`SinkTransientError` or
:class:`SinkPermanentError`; the relay never sees a redis, kombu or OS exception.

Sinks do no bookkeeping and no deduplication: delivery is at least once, with the notification
``id`` as the consumer's dedupe key (docs/NOTIFICATIONS.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import redis

from worker.config import NotifySink, Settings
from worker.errors import ConfigError, SinkError, SinkPermanentError, SinkTransientError
from worker.redis_options import client_options

if TYPE_CHECKING:
    from celery import Celery

#: A contract message (``worker.core.contract.build_message`` output).
Message = Mapping[str, Any]

#: Socket timeouts for the broker and stream clients: a hung Redis must fail a batch in seconds,
#: well inside the relay's claim lease, rather than hold the claims until they expire.
SOCKET_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What happened to one message. ``error`` is None when it was delivered.

    ``retry_after`` is the delay in seconds the receiver asked for (a webhook's Retry-After);
    the relay never retries sooner.
    """

    error: SinkError | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None


#: The result of a successful delivery.
DELIVERED = DeliveryResult()


class Sink(Protocol):
    """A destination for notification messages."""

    #: Short name for logs and metrics (``redis-stream``, ``webhook`` ...).
    name: str

    def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        """Deliver ``messages``; one result per message, same order.

        May raise :class:`SinkError` when the whole batch failed the same way (e.g. the broker is
        down); the relay then applies that error to every message of the batch.
        """
        ...

    def close(self) -> None:
        """Release connections. The sink is not used afterwards."""
        ...


def encode(message: Message) -> str:
    """The JSON text of a message as every sink sends it: compact, keys sorted, UTF-8.

    orjson gives the standard library's ``json.dumps(separators=(",", ":"), sort_keys=True,
    ensure_ascii=False)`` text for these messages, in C (the relay encodes every message)."""
    return orjson.dumps(message, option=orjson.OPT_SORT_KEYS).decode()


# --- Redis stream -------------------------------------------------------------------------------


class RedisStreamSink:
    """``XADD`` each message to a stream, one field ``payload`` holding the JSON.

    The batch goes in one pipeline (one round trip); ``MAXLEN ~`` trims old entries cheaply
    (approximate trimming removes whole radix-tree nodes only). The pipeline is not a MULTI
    transaction, so a failing command fails only its own message.
    """

    name = "redis-stream"

    def __init__(
        self, client: redis.Redis, *, stream: str, maxlen: int, owns_client: bool = True
    ) -> None:
        self._client = client
        self._stream = stream
        self._maxlen = maxlen
        self._owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, *, stream: str, maxlen: int) -> RedisStreamSink:
        client = redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            **client_options(),
        )
        return cls(client, stream=stream, maxlen=maxlen)

    def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        if not messages:
            return []
        pipe = self._client.pipeline(transaction=False)
        for message in messages:
            pipe.xadd(
                self._stream, {"payload": encode(message)}, maxlen=self._maxlen, approximate=True
            )
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            # Connection refused, timeout, reset: nothing is known to have been written.
            raise SinkTransientError(f"redis stream: {exc.__class__.__name__}") from exc
        finally:
            pipe.reset()
        return [
            DeliveryResult(SinkTransientError(f"redis stream: {reply.__class__.__name__}"))
            if isinstance(reply, Exception)
            else DELIVERED
            for reply in replies
        ]

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


# --- Celery task --------------------------------------------------------------------------------


class CelerySink:
    """Send one Celery task per message: ``task(message)`` on a named queue, JSON-serialised.

    The task id is the notification id, so a consumer running Celery's
    ``worker_deduplicate_successful_tasks`` also drops our redeliveries. Publishing retries
    briefly and then gives up: the outbox, not the broker, is where an undelivered message waits
    (a publish that hangs on a dead broker is a known Celery/kombu failure mode).
    """

    name = "celery"

    def __init__(self, app: Celery, *, task: str, queue: str, owns_app: bool = True) -> None:
        self._app = app
        self._task = task
        self._queue = queue
        self._owns_app = owns_app

    @classmethod
    def from_url(cls, broker_url: str, *, task: str, queue: str) -> CelerySink:
        from celery import Celery

        app = Celery("reauth-notify", broker=broker_url, set_as_current=False)
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=SOCKET_TIMEOUT,
            broker_transport_options={
                "socket_timeout": SOCKET_TIMEOUT,
                "socket_connect_timeout": SOCKET_TIMEOUT,
            },
        )
        return cls(app, task=task, queue=queue)

    def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        from kombu.exceptions import EncodeError, KombuError
        from kombu.exceptions import OperationalError as BrokerDown

        results: list[DeliveryResult] = []
        try:
            with self._app.producer_or_acquire() as producer:
                for index, message in enumerate(messages):
                    try:
                        self._send(message, producer)
                    except (BrokerDown, OSError, redis.ConnectionError, redis.TimeoutError) as exc:
                        # The broker is unreachable: fail the rest of the batch now instead of
                        # paying the publish retries once per message while our claims age.
                        down = DeliveryResult(
                            SinkTransientError(f"celery: {exc.__class__.__name__}")
                        )
                        results.extend([down] * (len(messages) - index))
                        break
                    except EncodeError as exc:
                        # Cannot become JSON: retrying the same payload never helps.
                        results.append(
                            DeliveryResult(SinkPermanentError(f"celery: {exc.__class__.__name__}"))
                        )
                    except (KombuError, redis.RedisError) as exc:
                        results.append(
                            DeliveryResult(SinkTransientError(f"celery: {exc.__class__.__name__}"))
                        )
                    else:
                        results.append(DELIVERED)
        except (KombuError, OSError, redis.RedisError) as exc:
            # Acquiring the producer (the broker connection) failed: the whole batch waits.
            raise SinkTransientError(f"celery broker: {exc.__class__.__name__}") from exc
        return results

    def _send(self, message: Message, producer: Any) -> None:
        self._app.send_task(
            self._task,
            args=(dict(message),),
            queue=self._queue,
            task_id=str(message["id"]),
            serializer="json",
            producer=producer,
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
        )

    def close(self) -> None:
        if self._owns_app:
            self._app.close()


# --- JSON-lines file ----------------------------------------------------------------------------


class FileSink:
    """Append one JSON line per message to a file and fsync once per batch.

    The embedded default (no Redis): good for a first run and for a log shipper to tail. A
    failed write fails the whole batch, which the relay retries; lines written before the
    failure may then appear twice, which at-least-once delivery allows.
    """

    name = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        if not messages:
            return []
        try:
            with self._path.open("a", encoding="utf-8") as fh:
                fh.writelines(encode(message) + "\n" for message in messages)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise SinkTransientError(
                f"file sink: {exc.strerror or exc.__class__.__name__}"
            ) from exc
        return [DELIVERED] * len(messages)

    def close(self) -> None:
        """Nothing to release: the file is opened per batch."""


# --- factory ------------------------------------------------------------------------------------


def build_sink(settings: Settings) -> Sink:
    """The sink ``settings.effective_notify_sink`` names, connected lazily.

    Raises:
        ConfigError: the chosen sink lacks its URL (e.g. celery without a broker or Redis URL).
    """
    kind = settings.effective_notify_sink
    if kind is NotifySink.REDIS_STREAM:
        if settings.redis_url is None:
            raise ConfigError("REAUTH_NOTIFY_SINK=redis-stream needs REAUTH_REDIS_URL")
        return RedisStreamSink.from_url(
            settings.redis_url, stream=settings.notify_stream, maxlen=settings.notify_stream_maxlen
        )
    if kind is NotifySink.WEBHOOK:
        from worker.notify.webhook import WebhookSink

        return WebhookSink.from_settings(settings)
    if kind is NotifySink.CELERY:
        broker = settings.broker_url or settings.redis_url
        if broker is None:
            raise ConfigError(
                "REAUTH_NOTIFY_SINK=celery needs REAUTH_BROKER_URL or REAUTH_REDIS_URL"
            )
        return CelerySink.from_url(
            broker, task=settings.notify_celery_task, queue=settings.notify_celery_queue
        )
    return FileSink(settings.notify_file)


__all__ = [
    "DELIVERED",
    "CelerySink",
    "DeliveryResult",
    "FileSink",
    "Message",
    "RedisStreamSink",
    "Sink",
    "SinkPermanentError",
    "SinkTransientError",
    "build_sink",
    "encode",
]
