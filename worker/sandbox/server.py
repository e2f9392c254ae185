"""Running the sandbox: in process on a background thread (tests, demo, bench) or as a server.

:func:`running_sandbox` serves it with :func:`worker.serving.serve_in_thread` (a free port
bound before uvicorn starts, its own loop on a daemon thread, a clean stop) and disposes the
member source afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from worker.sandbox.app import Sandbox
from worker.sandbox.config import SandboxConfig
from worker.serving import serve_in_thread, uvicorn_config


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


@contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, *, port: int = 0, host: str = "127.0.0.1"
) -> Iterator[RunningSandbox]:
    """Serve a sandbox on ``host:port`` (0 = a free port) for the duration of the block."""
    sandbox = Sandbox(config)
    try:
        with serve_in_thread(sandbox, host=host, port=port, name="mx-sandbox", lifespan="off") as p:
            yield RunningSandbox(sandbox=sandbox, host=host, port=p)
    finally:
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
        server = uvicorn_config(sandbox, host, port, access_log=access_log, lifespan="off")
        uvicorn.Server(server).run()
    finally:
        sandbox.close()
