"""Fixtures for the notification tests: settings builder and a real HTTP receiver."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from notify_helpers import Received, Receiver

from worker.config import Settings, load_settings


@pytest.fixture
def settings_for() -> Callable[..., Settings]:
    """Settings for a database URL plus keyword overrides (no environment involved)."""

    def build(database_url: str, **overrides: Any) -> Settings:
        return load_settings(database_url=database_url, **overrides)

    return build


# --- a real HTTP receiver ----------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received: list[Received] = []
    lock = threading.Lock()
    state = Receiver(url="", received=received, respond=lambda _m: 204, release=threading.Event())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with lock:
                received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.respond(json.loads(body))
            if status < 0:  # "hang": hold the request until the test ends
                state.release.wait(10)
                status = 204
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests assert on ``received``, not on the access log."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/reauth"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
