"""``reauth serve``: the reconnect pages on the public port and, with REAUTH_OPS_PORT and the
ops credentials, the ops listener (``GET /ops/report``) on its own socket."""

from __future__ import annotations

import asyncio
from typing import Any

import typer

from worker.cli import app
from worker.cli.output import setup
from worker.errors import ConfigError


async def serve_all(servers: list[Any]) -> None:
    """Run uvicorn servers together; when one stops (a signal reaches only the last one's
    handler), all stop."""

    async def watch() -> None:
        # should_exit is a plain attribute set by uvicorn's signal handler: polled.
        while not any(s.should_exit for s in servers):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        for s in servers:
            s.should_exit = True

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.gather(*(s.serve() for s in servers))
    finally:
        watcher.cancel()


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
) -> None:
    """Serve reconnect links: GET /r/{token} shows a page, POST asks MX for a fresh URI."""
    import uvicorn

    from worker.runtime import Runtime
    from worker.serving import uvicorn_config
    from worker.web.app import create_app
    from worker.web.ops import create_ops_app

    settings = setup()
    if not settings.reconnect_enabled:
        raise ConfigError(
            "reauth serve needs REAUTH_PUBLIC_URL (the https URL people reach this service at) "
            "and REAUTH_RECONNECT_SECRETS (at least one key of 32+ bytes)"
        )
    settings.require_mx_credentials()
    if settings.ops_enabled and settings.ops_port == port:
        raise ConfigError(f"REAUTH_OPS_PORT ({port}) must differ from the public --port")
    if settings.metrics_port:
        from worker import metrics

        # One process: its own registry (clicks, webhook intake, MX calls of the presses).
        metrics.serve(settings.metrics_port)
    rt = Runtime(settings)
    try:
        # No access log: request paths carry reconnect tokens.
        public = uvicorn.Server(uvicorn_config(create_app(rt), host, port))
        if not settings.ops_enabled:
            public.run()
            return
        assert settings.ops_port is not None
        ops = uvicorn.Server(
            uvicorn_config(create_ops_app(rt), settings.ops_host, settings.ops_port,
                           lifespan="off")
        )  # fmt: skip
        asyncio.run(serve_all([public, ops]))
    finally:
        rt.close()
