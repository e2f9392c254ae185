"""Long-running processes and the demo: ``worker``, ``beat`` (Celery) and ``demo``."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import typer
from rich.table import Table

from worker.cli import app
from worker.cli.output import JSON_OPT, console, print_json, safe, setup
from worker.errors import ConfigError


def _celery(argv: list[str]) -> None:
    settings = setup()
    if settings.broker_url is None:
        raise ConfigError("REAUTH_BROKER_URL is not set; the worker and beat need a broker")
    if argv[0] == "worker":
        settings.require_mx_credentials()
    if settings.metrics_port and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Prefork children count in their own processes; multiprocess mode lets the parent
        # serve their sum. Must be set before prometheus_client is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="reauth-metrics-")
    from worker.celery_app import app as celery_app

    celery_app.start(argv)
    sys.exit(0)


@app.command("worker")
def worker(
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", min=1),
    beat: bool = typer.Option(False, "--beat", help="Embed beat (development only)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
    queues: str | None = typer.Option(
        None,
        "--queues",
        "-Q",
        help="Comma-separated queues to consume (default: all of them, the events queue "
        "first). A dedicated events worker: -Q reauth.events -c 1.",
    ),
) -> None:
    """Run a Celery worker with the project's app (same as celery -A worker.celery_app worker)."""
    argv = ["worker", "--loglevel", loglevel]
    if queues:
        argv += ["-Q", queues]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if beat:
        argv.append("--beat")
    _celery(argv)


@app.command("beat")
def beat(loglevel: str = typer.Option("INFO", "--loglevel")) -> None:
    """Run Celery beat (the scan every REAUTH_SCAN_INTERVAL and the outbox sweeper)."""
    _celery(["beat", "--loglevel", loglevel])


# --- demo -----------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    json_out: bool = JSON_OPT,
    serve: bool = typer.Option(
        False, "--serve", help="Then keep the sandbox and `reauth serve` up, and print links."
    ),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port for --serve."),
) -> None:
    """Run the whole flow on embedded defaults (SQLite, in-process MX sandbox, file sink)."""
    from worker.cli.output import setup_logging_only
    from worker.demo import run_demo

    settings = setup(quiet=True)
    # The table is the demo's output; only errors go to the log.
    setup_logging_only(level="ERROR")
    if serve:
        run_demo(settings, serve_port=port, while_serving=_show_links)
        return
    result = run_demo(settings)
    if json_out:
        print_json(result)
        return
    _print_demo(result)


def _show_links(result: dict[str, Any]) -> None:
    """Print the demo's table and a reconnect_url per open episode; serve until Ctrl-C."""
    import time

    _print_demo(result)
    console.print()
    console.print("reauth serve is up. Open a link, press Reconnect, then Authorize:", style="bold")
    for link in result["links"]:
        console.print(f"  {safe(link['member'])}: {link['reconnect_url']}")
    console.print("Ctrl-C stops the sandbox and the web app.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopped")


def _print_demo(result: dict[str, Any]) -> None:
    table = Table(title="reauth demo: one scan against the in-process MX sandbox")
    for col in (
        "member",
        "case",
        "reason",
        "skip_aggregation",
        "why",
        "channel",
        "redirect",
        "outcome",
    ):
        table.add_column(col, overflow="fold")
    for r in result["rows"]:
        style = (
            "green"
            if r["outcome"] == "success"
            else ("dim" if "no call" in r["outcome"] else "yellow")
        )
        table.add_row(
            r["member"],
            r["case"],
            r["reason"],
            r["skip_aggregation"],
            r["why"],
            r["channel"],
            r["redirect"],
            r["outcome"],
            style=style,
        )
    console.print(table)
    summary = result["summary"]
    console.print(
        f"summary: {summary['members']} members ({summary['members_seeded_now']} seeded "
        f"now); scan claimed {summary['scan']['claimed']} in {summary['scan']['batches']} "
        f"batch(es); {summary['mx_calls']} MX calls; "
        f"{summary['notifications_created_now']} new notifications this run; "
        "outbox: "
        + (", ".join(f"{n} {status}" for status, n in sorted(summary["outbox"].items())) or "empty")
    )
    _print_webhook(result["webhook"])
    for name, value in result["backends"].items():
        console.print(f"  {name}: {value}")
    console.print(
        "Run it again: members already notified wait for the user, so no duplicate "
        "notification is created (the webhook case breaks a new member each run: one new "
        "notification). `reauth status`, `reauth history MEMBER` and `reauth webhooks list` "
        "show the rest."
    )
    if "funnel" in result:
        from worker.demo_funnel import describe

        console.print(describe(result["funnel"]), style="bold")


def _print_webhook(hook: dict[str, Any]) -> None:
    """The webhook-driven case: what the sandbox did, what MX's webhooks got, what followed."""
    table = Table(
        title=f"webhook-driven case: {hook['member']} breaks and reconnects in the sandbox "
        "(MX webhooks to reauth serve, no scan)"
    )
    for col in ("in the sandbox", "webhooks posted", "member", "episode", "next reminder",
                "notifications this episode"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for step in hook["steps"]:
        table.add_row(
            step["sandbox"],
            ", ".join(step["webhooks"]) or "-",
            f"{step['state']} ({step['reason']})",
            str(step["episode"]),
            step["next_reminder"],
            ", ".join(step["notifications"]) or "-",
        )
    console.print(table)
    console.print(
        f"webhook case: {hook['notifications_created_now']} notification (attempt trigger "
        f"{', '.join(hook['attempt_triggers']) or '-'}), {hook['mx_member_reads']} MX member "
        f"reads, {hook['mx_uri_calls']} MX URI call; reconnected: episode closed, next reminder "
        f"{'canceled' if hook['reminder_due_at_end'] is None else 'still scheduled'}"
    )
