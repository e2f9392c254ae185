"""Fault injection and the request log: a raw ASGI layer in front of the sandbox endpoints.

It sits outermost (directly under uvicorn) for two reasons: it must log every MX request, even
those it answers itself, and it needs uvicorn's own ``send`` callable to reach the TCP transport
when it injects a connection reset (``send.__self__.transport`` on uvicorn's h11/httptools
protocols; if that is unavailable it raises instead, which makes uvicorn drop the connection).

Per request: log arrival, sleep ``latency + jitter * U``, then one uniform draw picks at most one
fault from the stacked probabilities of :data:`worker.sandbox.config.FAULTS` (only for endpoints
in ``fault_endpoints``). Admin paths (``/_sandbox/...``) are neither logged nor faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.sandbox.config import FAULTS

if TYPE_CHECKING:
    from worker.sandbox.app import Sandbox

#: Oldest request-log entries are dropped beyond this many (memory bound for long runs).
REQUEST_LOG_MAX = 200_000

#: Header present on a request → the name recorded in the log (never the value).
_AUTH_HEADERS = (
    (b"md-api-key", "MD-API-KEY"),
    (b"md-api-token", "MD-API-TOKEN"),
    (b"md-session-token", "MD-SESSION-TOKEN"),
    (b"authorization", "Authorization"),
)


def classify(path: str) -> str | None:
    """The endpoint name of an MX path, or ``None`` for admin and OAuth-page paths."""
    if path.startswith(("/_sandbox", "/oauth/")):
        return None
    if path.startswith("/sso/"):
        return "sso"
    if path == "/sessions":
        return "sessions"
    if path.startswith("/members/"):
        return "nexus"
    if path.startswith("/users/"):
        return "platform"
    return "other"


class RequestLog:
    """Thread-safe log of MX requests; read from test threads while the server runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_MAX)

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e, query=dict(e["query"])) for e in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _entry(scope: Scope, endpoint: str) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in scope["headers"]}
    auth = next((name for raw, name in _AUTH_HEADERS if raw in headers), None)
    return {
        "time": time.time(),
        "method": scope["method"],
        "path": scope["path"],
        "query": dict(parse_qsl(scope["query_string"].decode("latin-1"))),
        "auth": auth,
        # Not secrets, and what the version contract is about.
        "accept": headers.get(b"accept", b"").decode("latin-1"),
        "accept_version": headers.get(b"accept-version", b"").decode("latin-1") or None,
        "endpoint": endpoint,
        "status": None,
        "fault": None,
    }


class FaultMiddleware:
    def __init__(self, sandbox: Sandbox, app: ASGIApp) -> None:
        self._sandbox = sandbox
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = classify(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self._app(scope, receive, send)
            return
        entry = _entry(scope, endpoint)
        self._sandbox.log.add(entry)

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        cfg = self._sandbox.config
        rng = self._sandbox.rng
        delay = cfg.latency + cfg.jitter * rng.random()
        if delay > 0:
            await asyncio.sleep(delay)
        fault = self._draw(endpoint)
        entry["fault"] = fault
        if fault is None:
            await self._app(scope, receive, logged_send)
        elif fault == "rate_reset":
            await _reset(send)
        elif fault == "rate_hang":
            replay = await _hang(receive, cfg.hang_seconds)
            if replay is not None:  # still connected after the hang: answer normally (late)
                await self._app(scope, replay, logged_send)
        else:
            await self._canned(fault, endpoint)(scope, receive, logged_send)

    def _draw(self, endpoint: str) -> str | None:
        cfg = self._sandbox.config
        draw = self._sandbox.rng.random()
        if endpoint not in cfg.fault_endpoints:
            return None
        edge = 0.0
        for name in FAULTS:
            edge += getattr(cfg, name)
            if draw < edge:
                return name
        return None

    def _canned(self, fault: str, endpoint: str) -> Response:
        cfg = self._sandbox.config
        error = self._sandbox.error_response
        media = self._sandbox.media_type(endpoint)
        if fault == "rate_429":
            return error(
                429,
                None,
                "Too many requests",
                endpoint,
                {"Retry-After": str(cfg.retry_after_seconds)},
            )
        if fault == "rate_429_no_retry_after":
            return error(429, None, "Too many requests", endpoint)
        if fault == "rate_500":
            return error(500, None, "Internal server error", endpoint)
        if fault == "rate_503":
            return error(503, None, "The platform is being updated", endpoint)
        if fault == "rate_malformed":
            return Response(b'{"member": {"guid": "MBR-', status_code=200, media_type=media)
        if fault == "rate_html":
            page = f"<html><body><h1>{cfg.html_status} Bad Gateway</h1></body></html>"
            return Response(page, status_code=cfg.html_status, media_type="text/html")
        return StreamingResponse(_oversized(cfg.oversize_bytes), media_type=media)


async def _oversized(size: int) -> Any:
    """A syntactically plausible member answer padded to ``size`` bytes, sent chunked."""
    head = b'{"member": {"guid": "MBR-big", "oauth_window_uri": "https://x"}, "pad": "'
    yield head
    chunk = b"x" * 65536
    left = max(0, size - len(head) - 2)
    while left > 0:
        piece = chunk[: min(left, len(chunk))]
        left -= len(piece)
        yield piece
    yield b'"}'


async def _hang(receive: Receive, seconds: float) -> Receive | None:
    """Wait ``seconds`` or until the client gives up. Returns a receive that replays the body
    when the client is still there, ``None`` when it disconnected."""
    consumed: list[Message] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                consumed.append(message)
    replay: deque[Message] = deque(consumed)

    async def replaying_receive() -> Message:
        return replay.popleft() if replay else await receive()

    return replaying_receive


async def _reset(send: Send) -> None:
    """Drop the TCP connection with an RST, without answering."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionResetError("sandbox: injected connection reset")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # SO_LINGER 0 turns close into a reset, like a crashed proxy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let connection_lost run, so uvicorn sees a disconnect rather than a missing response.
    for _ in range(3):
        await asyncio.sleep(0)
