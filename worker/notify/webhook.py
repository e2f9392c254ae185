"""The webhook sink: POST each message as JSON, signed per the Standard Webhooks scheme.

Signing (https://www.standardwebhooks.com/, "Signature scheme"), done by the reference
``standardwebhooks`` library:

* ``webhook-id``: the notification id, stable across redeliveries (the receiver's dedupe key);
* ``webhook-timestamp``: integer Unix seconds at send time; receivers reject old timestamps,
  which is what stops a captured request from being replayed later;
* ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``f"{id}.{timestamp}.{body}"``.

The key: a secret of the form ``whsec_<base64>`` is base64-decoded, as the spec says; any other
secret is used as its raw UTF-8 bytes (verify it with ``Webhook(secret.encode())``). The library
is handed the key *bytes*, because given a ``str`` it base64-decodes it, leniently: a raw secret
would then sign differently than it always has. The secret's rules (at least 24 bytes of key)
are :func:`worker.config.webhook_signing_key`, checked when the settings load.

Deadline: ``REAUTH_WEBHOOK_TIMEOUT`` bounds each delivery as a whole (connect, send, answer).
httpx's timeouts are per read, so a receiver trickling a byte every half second used to hold a
delivery for as long as it liked. Only the status and headers of the answer matter: at most
:data:`MAX_ANSWER_BYTES` of the body are read, then the connection is dropped (a 200 MB answer
used to be read whole).

Status handling: 2xx is delivered; 408, 429, 5xx, timeouts and connection errors are transient
(Retry-After honoured, at most an hour); any other status (4xx, and 3xx since redirects are not
followed) is permanent and the notification goes dead at once. Messages of a batch are sent
concurrently on one event loop, at most :data:`MAX_CONCURRENCY` at a time, so one slow receiver
path costs at most the deadline and never holds up the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from worker.clock import utc_now
from worker.config import Settings, webhook_signing_key
from worker.core.retry_after import parse_retry_after
from worker.errors import ConfigError, SinkPermanentError, SinkTransientError
from worker.notify.sinks import DELIVERED, DeliveryResult, Message, encode

#: Requests in flight per batch; also the connection pool size.
MAX_CONCURRENCY = 16
#: Statuses that mean "try again later" although they are 4xx.
RETRYABLE_4XX = frozenset({408, 429})
#: Never let a receiver's Retry-After park a notification longer than this (seconds).
MAX_RETRY_AFTER = 3600.0
#: Most of an answer's body we read: only its status and headers decide anything.
MAX_ANSWER_BYTES = 4096
USER_AGENT = "reauth-notify/1"


def signing_key(secret: str) -> bytes:
    """The HMAC key for ``secret``: base64-decoded ``whsec_…``, else the raw UTF-8 bytes.

    Raises:
        ConfigError: the secret is malformed or shorter than 24 bytes of key (the rules live
            in :func:`worker.config.webhook_signing_key`, which also checks it at load).
    """
    try:
        return webhook_signing_key(secret)
    except ValueError as exc:
        raise ConfigError(f"REAUTH_WEBHOOK_SECRET: {exc}") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value for one message."""
    return Webhook(key).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)


def signed_headers(key: bytes, msg_id: str, body: str, *, now: datetime) -> dict[str, str]:
    """All headers of one request: the three Standard Webhooks headers plus content type."""
    timestamp = int(now.timestamp())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


def classify(response: httpx.Response, *, now: Callable[[], datetime] = utc_now) -> DeliveryResult:
    """Map a receiver's answer to a delivery result (see the module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        return DELIVERED
    if status in RETRYABLE_4XX or status >= 500:
        retry_after = parse_retry_after(
            response.headers.get("retry-after"), now, cap=MAX_RETRY_AFTER
        )
        return DeliveryResult(
            SinkTransientError(f"webhook answered {status}"), retry_after=retry_after
        )
    return DeliveryResult(SinkPermanentError(f"webhook answered {status}"))


async def _read_some(response: httpx.Response, limit: int) -> None:
    """Read at most about ``limit`` bytes of the body (one network chunk past it at worst)."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > limit:
            return


class WebhookSink:
    """POST messages to one URL, signed; concurrent within a batch, one deadline each."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float,
        max_concurrency: int = MAX_CONCURRENCY,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._url = url
        self._key = signing_key(secret)
        self._timeout = timeout
        self._max_concurrency = max_concurrency
        self._transport = transport
        # The clock is injected so a test can sign with an old timestamp; in production the
        # timestamp must be the real send time, or receivers reject the request as a replay.
        self._clock = clock
        # Loaded once: reading the CA bundle costs tens of milliseconds, and every batch gets a
        # new client (a client belongs to the event loop of its batch).
        self._tls = httpx.create_ssl_context()

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookSink:
        if settings.webhook_url is None or settings.webhook_secret is None:
            raise ConfigError(
                "REAUTH_NOTIFY_SINK=webhook needs REAUTH_WEBHOOK_URL and REAUTH_WEBHOOK_SECRET"
            )
        return cls(
            settings.webhook_url,
            settings.webhook_secret.get_secret_value(),
            timeout=settings.webhook_timeout,
        )

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            # Per-operation timeouts as well, though the deadline in _post comes first.
            timeout=httpx.Timeout(self._timeout),
            limits=httpx.Limits(
                max_connections=self._max_concurrency,
                max_keepalive_connections=self._max_concurrency,
            ),
            follow_redirects=False,
            verify=self._tls,
            transport=self._transport,
        )

    async def _post(
        self, client: httpx.AsyncClient, message: Message, gate: asyncio.Semaphore
    ) -> DeliveryResult:
        body = encode(message)
        async with gate:
            # Signed when it is sent, not when the batch started: the timestamp is checked.
            headers = signed_headers(self._key, str(message["id"]), body, now=self._clock())
            request = client.build_request(
                "POST", self._url, content=body.encode(), headers=headers
            )
            deadline = asyncio.get_running_loop().time() + self._timeout
            try:
                async with asyncio.timeout_at(deadline):
                    response = await client.send(request, stream=True)
            except (TimeoutError, httpx.TimeoutException):
                return DeliveryResult(
                    SinkTransientError(f"webhook timeout: no answer within {self._timeout:g}s")
                )
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                return DeliveryResult(
                    SinkPermanentError(f"webhook URL unusable ({exc.__class__.__name__})")
                )
            except httpx.HTTPError as exc:
                # Only the class name: httpx messages can carry the URL, which may hold a token.
                return DeliveryResult(SinkTransientError(f"webhook {exc.__class__.__name__}"))
            try:
                async with asyncio.timeout_at(deadline):
                    await _read_some(response, MAX_ANSWER_BYTES)
            except (TimeoutError, httpx.HTTPError):
                pass  # the status has answered already; an unread body only costs the connection
            finally:
                await response.aclose()
        return classify(response, now=self._clock)

    async def _deliver_all(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        gate = asyncio.Semaphore(self._max_concurrency)
        async with self._client() as client:
            return list(await asyncio.gather(*(self._post(client, m, gate) for m in messages)))

    def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        """Deliver a batch; blocks until every message is delivered, failed or past its deadline.

        Runs its own event loop, so call it from synchronous code (the relay), not a coroutine.
        """
        if not messages:
            return []
        return asyncio.run(self._deliver_all(messages))

    def close(self) -> None:
        """Nothing to release: each batch's client is closed when the batch ends."""
