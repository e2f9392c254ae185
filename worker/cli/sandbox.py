"""``reauth sandbox``: serve the MX sandbox (see worker/sandbox)."""

from __future__ import annotations

import typer

from worker.cli import app


@app.command("sandbox")
def sandbox(
    port: int = typer.Option(8099, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
) -> None:
    """Serve the MX sandbox (SSO, Nexus and Platform endpoints with fault injection)."""
    from worker.sandbox.server import serve

    serve(host=host, port=port)
