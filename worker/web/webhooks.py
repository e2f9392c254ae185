"""``POST /mx/webhooks`` (and ``/mx/webhooks/{type}``): MX's webhooks, stored, answered 204.

MX posts JSON over HTTPS with no signature, no event id and no timestamp, and retries for about
a day. So the handler checks HTTP Basic credentials (constant-time) and, when configured, the
source address; reads at most 64 KiB; stores the raw body in the inbox (duplicates within the
window once, unusable bodies as ``rejected``); and answers **204** only after the row is
committed: once MX got its 204 the event is in the database. Concurrent POSTs share a
transaction (:class:`GroupCommit`), so under load the intake costs one commit per batch.
Applying is the apply job's work (``reauth.apply_webhooks``, queued here, coalesced, and swept
on beat), never done in the request. Wrong credentials: 401, nothing stored. No body or
payload is logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from worker import metrics, tracing
from worker.clock import utc_now
from worker.runtime import Runtime
from worker.service import webhooks
from worker.store.inbox import Stored
from worker.web import basic_auth

log = structlog.get_logger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _TooLarge(Exception):
    pass


class WebhookIntake:
    """The webhook routes over one runtime (see :func:`routes`)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        settings = rt.settings
        self.username = (settings.mx_webhook_username or "").encode()
        password = settings.mx_webhook_password
        self.password = password.get_secret_value().encode() if password else b""
        self.enabled = settings.mx_webhooks_enabled
        self.allowed: list[IpNetwork] = [
            ipaddress.ip_network(n) for n in settings.mx_webhook_allowed_ips
        ]
        self.proxies: list[IpNetwork] = [
            ipaddress.ip_network(n) for n in settings.mx_webhook_trusted_proxies
        ]
        self.commits = GroupCommit(rt)

    # --- checks -------------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """HTTP Basic, both parts compared in constant time."""
        return basic_auth.matches(header, self.username, self.password)

    def _in(self, address: str, networks: list[IpNetwork]) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in n for n in networks)

    def source(self, request: Request) -> str:
        """The sender's address: the peer, or, when the peer is a trusted proxy, the right-most
        ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
        peer = request.client.host if request.client else ""
        if not self._in(peer, self.proxies):
            return peer
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self._in(hop, self.proxies):
                return hop
        return peer

    def source_allowed(self, request: Request) -> bool:
        return not self.allowed or self._in(self.source(request), self.allowed)

    async def body(self, request: Request) -> bytes:
        """The body, refused past :data:`~worker.service.webhooks.MAX_BODY_BYTES` without
        reading the rest."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > webhooks.MAX_BODY_BYTES:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > webhooks.MAX_BODY_BYTES:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    # --- the route ----------------------------------------------------------------------------

    async def receive(self, request: Request) -> Response:
        path_type = request.path_params.get("type")
        metric_type = str(path_type or "any").upper()[:32]
        if metric_type not in webhooks.KNOWN_TYPES and metric_type != "ANY":
            metric_type = "OTHER"
        if not self.enabled:
            return PlainTextResponse("not found", status_code=404)
        if not self.source_allowed(request):
            metrics.WEBHOOKS_RECEIVED.labels(type=metric_type, outcome="forbidden").inc()
            log.warning("webhook.forbidden_source")
            return PlainTextResponse("forbidden", status_code=403)
        if not self.authorized(request.headers.get("authorization")):
            metrics.WEBHOOKS_RECEIVED.labels(type=metric_type, outcome="unauthorized").inc()
            log.warning("webhook.unauthorized")
            return PlainTextResponse(
                "unauthorized", status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="mx-webhooks"'},
            )  # fmt: skip
        try:
            body = await self.body(request)
        except _TooLarge:
            metrics.WEBHOOKS_RECEIVED.labels(type=metric_type, outcome="too_large").inc()
            log.warning("webhook.too_large")
            return PlainTextResponse("payload too large", status_code=413)
        # The request's span covers waiting for its group commit. The apply task is queued by
        # the flusher, which runs in the context of the request that started it: under load
        # the apply's trace goes on from that request's intake span (Celery).
        with tracing.span("reauth.webhook.intake", {"reauth.webhook_type": metric_type}):
            await self.commits.store(body, path_type)
        return Response(status_code=204)


class GroupCommit:
    """Store POSTs in shared transactions, answering each only after its own is committed.

    A request hands its body over and waits. A flusher takes every body waiting (up to
    :data:`MAX_BATCH`), stores them in one transaction on a worker thread
    (:func:`~worker.service.webhooks.intake_many`), wakes each request, and then has the apply job
    queued (:meth:`_hand_on`: off the answers' path, one at a time; with inline follow-ups, which
    apply in the hand-on, before the answers). Up to :data:`FLUSHERS` batches commit at once: bodies
    that arrive while they commit form the next one, so under load many requests share one commit
    (and one thread hop), and a request that finds a flusher free is its own batch, with no added
    wait. A failed commit fails every request of its batch (5xx: MX retries); nothing is answered
    204 before the commit that holds its row.
    """

    #: Bodies per transaction at most (64 KiB each at worst: a bounded transaction).
    MAX_BATCH = 200
    #: Transactions in flight at once: while one waits for its commit, the next one fills.
    FLUSHERS = 2

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._waiting: list[tuple[bytes, str | None, asyncio.Future[Stored]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._hand_on_wanted = False
        self._hand_on_task: asyncio.Task[None] | None = None

    async def store(self, body: bytes, path_type: str | None) -> Stored:
        """Committed when this returns."""
        done: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._waiting.append((body, path_type, done))
        if len(self._flushers) < self.FLUSHERS:
            # A task of its own: a request that goes away cannot stop its batch's commit.
            task = asyncio.create_task(self._flush())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.MAX_BATCH]
            del self._waiting[: self.MAX_BATCH]
            posts = [(body, path_type) for body, path_type, _ in batch]
            try:
                stored = await run_in_threadpool(self._commit, posts)
            except Exception as exc:  # the database: every request of the batch fails
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (*_, done), result in zip(batch, stored, strict=True):
                if not done.done():
                    done.set_result(result)
            if not self.rt.inline and any(not st.duplicate for st in stored):
                self._want_hand_on()

    def _commit(self, posts: list[tuple[bytes, str | None]]) -> list[Stored]:
        stored = webhooks.intake_many(self.rt, posts, utc_now())
        if self.rt.inline and any(not st.duplicate for st in stored):
            # Inline follow-ups (the demo) apply in the hand-on itself: done before the
            # answers, so a sender's next webhook finds the previous one applied.
            self._hand_on()
        return stored

    def _want_hand_on(self) -> None:
        """Have the apply job queued after this commit. The answers do not wait for it (a
        Redis round trip and maybe a broker publish, on a thread); one hand-on runs at a time,
        and commits made meanwhile share the next one (their events are committed before it
        starts, so the job it queues sees them)."""
        self._hand_on_wanted = True
        if self._hand_on_task is None or self._hand_on_task.done():
            self._hand_on_task = asyncio.create_task(self._hand_on_loop())

    async def _hand_on_loop(self) -> None:
        while self._hand_on_wanted:
            self._hand_on_wanted = False
            await run_in_threadpool(self._hand_on)

    def _hand_on(self) -> None:
        """Queue the apply job. The events are committed already: if queueing fails, the
        sweeper on beat applies them, so the answers stay 204."""
        try:
            self.rt.followups.apply_webhooks()
        except Exception as exc:  # broker down: the beat sweeper catches up
            log.warning("webhook.queue_failed", error=type(exc).__name__)


def routes(rt: Runtime) -> list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]]:
    """The routes to add to ``reauth serve``'s app."""
    intake = WebhookIntake(rt)
    return [
        ("/mx/webhooks", intake.receive, ["POST"]),
        ("/mx/webhooks/{type}", intake.receive, ["POST"]),
    ]
