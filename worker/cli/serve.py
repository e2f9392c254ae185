"""``reauth serve``: the reconnect pages on the public port and, with REAUTH_OPS_PORT and the
ops credentials, the ops listener (``GET /ops/report``) on its own socket."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from typing import Any

import typer

from worker.cli import app
from worker.cli.output import setup
from worker.errors import ConfigError


async def serve_all(
    servers: list[Any], *, sockets: list[list[socket.socket] | None] | None = None
) -> None:
    """Run uvicorn servers together (``sockets``: each one's pre-bound sockets, or None to
    bind its own); when one stops (a signal reaches only the last one's handler), all stop."""

    async def watch() -> None:
        # should_exit is a plain attribute set by uvicorn's signal handler: polled.
        while not any(s.should_exit for s in servers):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        for s in servers:
            s.should_exit = True

    watcher = asyncio.ensure_future(watch())
    try:
        bound = sockets or [None] * len(servers)
        await asyncio.gather(*(s.serve(sockets=b) for s, b in zip(servers, bound, strict=True)))
    finally:
        watcher.cancel()


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
    reuse_port: bool = typer.Option(
        False,
        "--reuse-port",
        help="Bind with SO_REUSEPORT, so several `reauth serve` processes can share the port "
        "(the kernel spreads connections between them); REAUTH_METRICS_PORT is per process: "
        "leave it unset or give each process its own.",
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="Server processes sharing the port, each with its own runtime (database pool, MX "
        "client) under one supervisor; one per core. /metrics (REAUTH_METRICS_PORT) sums them.",
    ),
) -> None:
    """Serve reconnect links: GET /r/{token} shows a page, POST asks MX for a fresh URI."""
    import uvicorn

    from worker.runtime import Runtime, tune_gc
    from worker.serving import reuse_port_socket, uvicorn_config
    from worker.web.app import DB_THREADS, PING_IDLE_AFTER_S, create_app
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
    if workers > 1:
        serve_processes(settings, host, port, workers, reuse_port=reuse_port)
        return
    if settings.metrics_port:
        from worker import metrics

        # One process: its own registry (clicks, webhook intake, MX calls of the presses).
        metrics.serve(settings.metrics_port)
    rt = Runtime(settings, ping_idle_after=PING_IDLE_AFTER_S, pool_size=DB_THREADS)
    try:
        # No access log: request paths carry reconnect tokens.
        public = uvicorn.Server(uvicorn_config(create_app(rt), host, port))
        tune_gc()  # as the worker does: fewer, shorter collections in a request's path
        # With --reuse-port every process binds its listeners with SO_REUSEPORT.
        public_sockets = [reuse_port_socket(host, port)] if reuse_port else None
        if not settings.ops_enabled:
            public.run(sockets=public_sockets)
            return
        assert settings.ops_port is not None
        ops = uvicorn.Server(
            uvicorn_config(create_ops_app(rt), settings.ops_host, settings.ops_port,
                           lifespan="off")
        )  # fmt: skip
        ops_sockets = (
            [reuse_port_socket(settings.ops_host, settings.ops_port)] if reuse_port else None
        )
        asyncio.run(serve_all([public, ops], sockets=[public_sockets, ops_sockets]))
    finally:
        rt.close()


#: What uvicorn imports in each process of ``reauth serve --workers N``.
PROCESS_APP = "worker.cli.serve:process_app"


def process_app() -> Any:
    """The app of one process of ``reauth serve --workers N`` (uvicorn calls this in each process
    it starts): settings and logging from the environment, its own runtime, closed at shutdown."""
    from worker.runtime import Runtime, tune_gc
    from worker.web.app import DB_THREADS, PING_IDLE_AFTER_S, create_app

    settings = setup()
    app = create_app(
        Runtime(settings, ping_idle_after=PING_IDLE_AFTER_S, pool_size=DB_THREADS),
        close_runtime=True,
    )
    tune_gc()  # as the worker does: fewer, shorter collections in a request's path
    return app


def serve_processes(
    settings: Any, host: str, port: int, workers: int, *, reuse_port: bool = False
) -> None:
    """``workers`` uvicorn processes accepting on one listening socket (bound here, inherited),
    under uvicorn's supervisor, which restarts a process that dies and stops them all on
    SIGINT/SIGTERM. This process serves /metrics (summed over the processes) and the ops
    listener, if configured; it handles no public request. Each process counts in
    PROMETHEUS_MULTIPROC_DIR (a temporary directory unless set). With ``reuse_port`` the socket
    is bound with SO_REUSEPORT, so other `reauth serve --reuse-port` instances may share it."""
    from uvicorn.supervisors import Multiprocess

    from worker.runtime import Runtime
    from worker.serving import reuse_port_socket, serve_in_thread, uvicorn_config
    from worker.web.ops import create_ops_app

    if settings.metrics_port:
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # As `reauth worker` does: each process counts its own presses in the directory,
            # this one serves their sum. Inherited by the processes started below.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="reauth-metrics-")
        from worker import metrics

        metrics.serve(settings.metrics_port)
    config = uvicorn_config(PROCESS_APP, host, port)
    config.factory = True
    config.workers = workers
    sock = reuse_port_socket(host, port) if reuse_port else config.bind_socket()
    try:
        if not settings.ops_enabled:
            Multiprocess(config, sockets=[sock]).run()
            return
        assert settings.ops_port is not None
        rt = Runtime(settings)
        try:
            ops = create_ops_app(rt)
            with serve_in_thread(ops, host=settings.ops_host, port=settings.ops_port,
                                 name="ops", lifespan="off"):  # fmt: skip
                Multiprocess(config, sockets=[sock]).run()
        finally:
            rt.close()
    finally:
        sock.close()
