"""Running the sandbox: in process on a background thread (tests, demo, bench) or as a server.

:func:`running_sandbox` binds 127.0.0.1 on a free port *before* starting uvicorn (so the port is
known without parsing logs and cannot be stolen), runs uvicorn's own event loop on a daemon
thread, and on exit asks it to stop, waits for the thread and disposes the member source, so a
test run with ``-W error`` sees no unclosed socket or loop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from worker.sandbox.app import Sandbox
from worker.sandbox.config import SandboxConfig

#: How long in-flight requests (a hang fault, say) may delay a shutdown.
GRACEFUL_SHUTDOWN_SECONDS = 2


@dataclass
class RunningSandbox:
    """Handle on a sandbox served in process."""

    sandbox: Sandbox
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """``REAUTH_MX_BASE_URL`` (Nexus and Platform)."""
        return f"http://{self.host}:{self.port}"

    @property
    def sso_base_url(self) -> str:
        """``REAUTH_MX_SSO_BASE_URL``."""
        return f"{self.base_url}/sso"

    @property
    def config(self) -> SandboxConfig:
        """The live configuration: assignments take effect on the next request."""
        return self.sandbox.config

    def requests(self) -> list[dict[str, Any]]:
        """A copy of the request log (oldest first)."""
        return self.sandbox.log.snapshot()

    def clear_requests(self) -> None:
        self.sandbox.log.clear()

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.sandbox.stats)


def _uvicorn_config(app: Sandbox, host: str, port: int, *, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvloop and httptools when installed: the sandbox shares the machine with the worker
        # in tests and benchmarks, so its CPU per request matters.
        loop="auto",
        http="auto",
        ws="none",
        lifespan="off",
        access_log=access_log,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=30,
    )


@contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, *, port: int = 0, host: str = "127.0.0.1"
) -> Iterator[RunningSandbox]:
    """Serve a sandbox on ``host:port`` (0 = a free port) for the duration of the block."""
    sandbox = Sandbox(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        server = uvicorn.Server(_uvicorn_config(sandbox, host, bound_port, access_log=False))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="mx-sandbox", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the MX sandbox did not start")
            time.sleep(0.01)
        try:
            yield RunningSandbox(sandbox=sandbox, host=host, port=bound_port)
        finally:
            server.should_exit = True
            thread.join(timeout=GRACEFUL_SHUTDOWN_SECONDS + 10)
    finally:
        sock.close()
        sandbox.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 8099,
    config: SandboxConfig | None = None,
    *,
    access_log: bool = False,
) -> None:
    """Serve the sandbox in the foreground until interrupted (``reauth sandbox``)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sandbox = Sandbox(config)
    try:
        uvicorn.Server(_uvicorn_config(sandbox, host, port, access_log=access_log)).run()
    finally:
        sandbox.close()
