"""``reauth sandbox``: serve the MX sandbox (see worker/sandbox and docs/SANDBOX.md).

Every fault knob of :class:`worker.sandbox.config.SandboxConfig` has a flag; they can also be
changed while the sandbox runs with ``PUT /_sandbox/config``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from worker.cli import app
from worker.sandbox.config import DEFAULT_API_KEY, DEFAULT_CLIENT_ID


@app.command("sandbox")
def sandbox(
    port: int = typer.Option(8099, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    client_id: str = typer.Option(DEFAULT_CLIENT_ID, help="MX client id the sandbox accepts."),
    api_key: str = typer.Option(
        DEFAULT_API_KEY, envvar="REAUTH_SANDBOX_API_KEY", help="MX API key the sandbox accepts."
    ),
    members_file: str | None = typer.Option(None, help="JSON file of members (else on the fly)."),
    members_db: str | None = typer.Option(
        None, help="SQLAlchemy URL: members are the rows of the project's members table."
    ),
    uri_base: str = typer.Option(
        "https://int-app.moneydesktop.com", help="Scheme and host of generated OAuth URIs."
    ),
    latency: float = typer.Option(0.0, min=0, help="Seconds added to every MX request."),
    jitter: float = typer.Option(0.0, min=0, help="Up to this many extra seconds, uniform."),
    rate_429: float = typer.Option(0.0, min=0, max=1, help="Share of 429 with Retry-After."),
    rate_429_no_retry_after: float = typer.Option(0.0, min=0, max=1, help="429 without it."),
    retry_after: int = typer.Option(1, min=0, help="Retry-After seconds on 429."),
    rate_500: float = typer.Option(0.0, min=0, max=1, help="Share of 500 answers."),
    rate_503: float = typer.Option(0.0, min=0, max=1, help="Share of 503 answers."),
    rate_hang: float = typer.Option(0.0, min=0, max=1, help="Share of requests that hang."),
    hang_seconds: float = typer.Option(60.0, min=0, help="How long a hang lasts."),
    rate_reset: float = typer.Option(0.0, min=0, max=1, help="Share of connection resets."),
    rate_malformed: float = typer.Option(0.0, min=0, max=1, help="Share of truncated JSON."),
    rate_html: float = typer.Option(0.0, min=0, max=1, help="Share of HTML error pages."),
    rate_oversize: float = typer.Option(0.0, min=0, max=1, help="Share of oversized bodies."),
    oversize_bytes: int = typer.Option(10 * 1024 * 1024, min=0, help="Size of those bodies."),
    expire_session_every: int = typer.Option(
        0, min=0, help="Every Nth Nexus call finds its session expired (4011); 0 = never."
    ),
    error_envelope: str = typer.Option(
        "error-object", help="Error body shape: error-object, error-string or top-level."
    ),
    seed: int = typer.Option(0, help="Seed of the fault draws (same seed, same faults)."),
    access_log: bool = typer.Option(False, help="Log every request (slows the sandbox)."),
) -> None:
    """Serve the MX sandbox: SSO, Nexus and Platform endpoints with fault injection."""
    from worker.errors import InputError
    from worker.sandbox.config import SandboxConfig
    from worker.sandbox.server import serve

    if members_file is not None and not Path(members_file).is_file():
        raise InputError(f"sandbox: no such members file: {members_file}")
    try:
        config = SandboxConfig(
            client_id=client_id,
            api_key=api_key,
            members_file=members_file,
            members_db_url=members_db,
            uri_base=uri_base,
            latency=latency,
            jitter=jitter,
            rate_429=rate_429,
            rate_429_no_retry_after=rate_429_no_retry_after,
            retry_after_seconds=retry_after,
            rate_500=rate_500,
            rate_503=rate_503,
            rate_hang=rate_hang,
            hang_seconds=hang_seconds,
            rate_reset=rate_reset,
            rate_malformed=rate_malformed,
            rate_html=rate_html,
            rate_oversize=rate_oversize,
            oversize_bytes=oversize_bytes,
            expire_session_every=expire_session_every,
            error_envelope=error_envelope,
            seed=seed,
        )
    except ValueError as exc:
        raise InputError(f"sandbox: {exc}") from None
    serve(host=host, port=port, config=config, access_log=access_log)
