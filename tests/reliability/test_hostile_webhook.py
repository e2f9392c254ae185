"""Hostile webhook receivers: one deadline per delivery, and only a few KiB of any answer read.

Real loopback servers on raw sockets, so the client meets what a broken or hostile receiver
really does on the wire: answer headers trickled a byte at a time (httpx's timeout is per read,
so this held a delivery for as long as the receiver liked), a body trickled after a 200, and an
answer of 200 MB (read whole before, +400 MB of memory).
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from worker.errors import SinkError, SinkTransientError
from worker.notify.webhook import WebhookSink

pytestmark = [pytest.mark.reliability]

SECRET = "a-raw-test-secret-of-at-least-24-bytes"
#: The deadline these tests give the sink, seconds.
DEADLINE = 1.0
#: The trickling receivers send one byte this often: a 60-byte answer takes 15 s.
TRICKLE = 0.25


class Server:
    """A loopback TCP server; ``respond(conn, server)`` writes the answer to one request."""

    def __init__(self, respond: Callable[[socket.socket, Server], None]) -> None:
        self.respond = respond
        self.stop = threading.Event()
        self.sent = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def count(self, n: int) -> None:
        with self._lock:
            self.sent += n

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                _read_request(conn)
                self.respond(conn, self)
            except OSError:
                pass  # the client hung up: that is what these tests want

    def close(self) -> None:
        self.stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


def _read_request(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)


@contextmanager
def serving(respond: Callable[[socket.socket, Server], None]) -> Iterator[Server]:
    server = Server(respond)
    try:
        yield server
    finally:
        server.close()


def _trickle(data: bytes) -> Callable[[socket.socket, Server], None]:
    def respond(conn: socket.socket, server: Server) -> None:
        for i in range(len(data)):
            if server.stop.is_set():
                return
            conn.sendall(data[i : i + 1])
            server.count(1)
            time.sleep(TRICKLE)

    return respond


def _trickled_body(conn: socket.socket, server: Server) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    _trickle(b"x" * 100)(conn, server)


def _deliver(url: str, count: int) -> tuple[list[SinkError | None], float]:
    sink = WebhookSink(url, SECRET, timeout=DEADLINE)
    started = time.monotonic()
    try:
        results = sink.deliver([{"id": f"m{i}"} for i in range(count)])
    finally:
        sink.close()
    return [r.error for r in results], time.monotonic() - started


def test_trickled_answer_headers_hit_one_deadline_per_delivery() -> None:
    """Headers sent a byte every 0.25 s (15 s in all): each of five concurrent deliveries ends
    at the 1 s deadline as a transient timeout, and the batch takes about one deadline."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: trickle-trickle\r\n\r\n"
    with serving(_trickle(answer)) as server:
        errors, elapsed = _deliver(server.url, 5)
    assert elapsed < DEADLINE + 1.5, elapsed
    assert all(isinstance(e, SinkTransientError) and "timeout" in str(e) for e in errors), errors


def test_trickled_body_after_a_200_is_delivered_by_the_deadline() -> None:
    """The status decides: a 200 whose body trickles in is delivered, and the body is not
    waited for past the deadline (it was: 25 s for 100 bytes)."""
    with serving(_trickled_body) as server:
        errors, elapsed = _deliver(server.url, 3)
    assert elapsed < DEADLINE + 1.5, elapsed
    assert errors == [None, None, None]


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [("200 OK", None), ("503 Service Unavailable", 30.0)],
)
def test_huge_answer_is_not_read(status: str, retry_after: float | None) -> None:
    """A 200 MB answer: a few KiB of it are read (MAX_ANSWER_BYTES), then the connection is
    dropped. Memory stays flat (the traced peak is under 4 MiB, about 0.4 MiB measured; reading
    it whole peaked at 420 MB) and the status and Retry-After still decide the result."""
    total = 200 * 1024 * 1024
    chunk = b"\0" * (1024 * 1024)

    def flood(conn: socket.socket, server: Server) -> None:
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Length: {total}\r\nRetry-After: 30\r\n\r\n".encode()
        )
        for _ in range(total // len(chunk)):
            conn.sendall(chunk)
            server.count(len(chunk))

    with serving(flood) as server:
        sink = WebhookSink(server.url, SECRET, timeout=10)
        tracemalloc.start()
        try:
            started = time.monotonic()
            (result,) = sink.deliver([{"id": "big"}])
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            sink.close()
        time.sleep(0.2)  # let the server notice the hang-up
        sent = server.sent
    assert peak < 4 * 1024 * 1024, peak
    assert sent < total // 2, sent
    assert elapsed < 5, elapsed
    assert result.delivered is (retry_after is None)
    assert result.retry_after == retry_after


def test_unresponsive_receiver_costs_one_deadline() -> None:
    """A receiver that accepts and never answers: a transient timeout after the deadline."""

    def silent(conn: socket.socket, server: Server) -> None:
        server.stop.wait(30)

    with serving(silent) as server:
        errors, elapsed = _deliver(server.url, 2)
    assert elapsed < DEADLINE + 1.5, elapsed
    assert all(isinstance(e, SinkTransientError) for e in errors), errors


def test_closed_port_is_transient_and_fast() -> None:
    """Nothing listening: connection refused, transient, well inside the deadline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    errors, elapsed = _deliver(f"http://127.0.0.1:{port}/hook", 1)
    assert elapsed < DEADLINE + 1.5
    assert isinstance(errors[0], SinkTransientError)
