"""Serving an ASGI app with uvicorn: in the foreground (``reauth serve``) or on a background
thread (tests, the demo, the benchmark).

:func:`serve_in_thread` binds the socket *before* starting uvicorn (so the port is known and
cannot be stolen), runs uvicorn's own event loop on a daemon thread, and on exit asks it to stop
and waits for the thread, so a test run with ``-W error`` sees no unclosed socket or loop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

#: How long in-flight requests may delay a shutdown.
GRACEFUL_SHUTDOWN_SECONDS = 2


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    *,
    access_log: bool = False,
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> uvicorn.Config:
    """uvloop and httptools when installed; no access log (paths can carry tokens)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        ws="none",
        lifespan=lifespan,
        access_log=access_log,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=30,
        # X-Forwarded-For is believed only from REAUTH_MX_WEBHOOK_TRUSTED_PROXIES (worker/web/
        # webhooks.py); uvicorn's default would trust it from 127.0.0.1 whatever is configured.
        proxy_headers=False,
    )


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket bound with SO_REUSEPORT (several processes on one port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@contextmanager
def serve_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "asgi",
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> Iterator[int]:
    """Serve ``app`` on ``host:port`` (0 = a free port) for the block; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        bound = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(app, host, bound, lifespan=lifespan))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.01)
        try:
            yield bound
        finally:
            server.should_exit = True
            thread.join(timeout=GRACEFUL_SHUTDOWN_SECONDS + 10)
    finally:
        sock.close()
