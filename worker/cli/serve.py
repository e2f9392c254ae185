"""``reauth serve``: the reconnect pages (and, with REAUTH_OPS_PORT, nothing else yet)."""

from __future__ import annotations

import typer

from worker.cli import app
from worker.cli.output import setup
from worker.errors import ConfigError


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
    reuse_port: bool = typer.Option(
        False,
        "--reuse-port",
        help="Bind with SO_REUSEPORT, so several `reauth serve` processes can share the port "
        "(the kernel spreads connections between them).",
    ),
) -> None:
    """Serve reconnect links: GET /r/{token} shows a page, POST asks MX for a fresh URI."""
    import uvicorn

    from worker.runtime import Runtime
    from worker.serving import reuse_port_socket, uvicorn_config
    from worker.web.app import create_app

    settings = setup()
    if not settings.reconnect_enabled:
        raise ConfigError(
            "reauth serve needs REAUTH_PUBLIC_URL (the https URL people reach this service at) "
            "and REAUTH_RECONNECT_SECRETS (at least one key of 32+ bytes)"
        )
    settings.require_mx_credentials()
    if settings.metrics_port:
        from worker import metrics

        # One process: its own registry (clicks, webhook intake, MX calls of the presses).
        metrics.serve(settings.metrics_port)
    rt = Runtime(settings)
    try:
        # No access log: request paths carry reconnect tokens.
        server = uvicorn.Server(uvicorn_config(create_app(rt), host, port))
        if reuse_port:
            server.run(sockets=[reuse_port_socket(host, port)])
        else:
            server.run()
    finally:
        rt.close()
