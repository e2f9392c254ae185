"""``reauth report``: the re-authentication funnel for product and on-call (docs/FUNNEL.md).

A table for people, ``--json`` for machines, ``--html FILE`` for one self-contained page with
the charts. Reads the episode summaries only (:mod:`worker.service.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from worker.cli import app
from worker.cli.output import JSON_OPT, console, print_json, runtime, safe, setup
from worker.clock import utc_now
from worker.errors import InputError
from worker.service import report as service
from worker.service.report_html import STAGE_LABELS, hours, pct, render


def _print(data: dict[str, Any]) -> None:
    overall = data["overall"]
    funnel = Table(title=f"Funnel: episodes detected in the last {safe(data['since'])}")
    for name, justify in (("stage", "left"), ("episodes", "right"), ("of previous", "right"),
                          ("of detected", "right")):  # fmt: skip
        funnel.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in overall["funnel"]:
        funnel.add_row(
            STAGE_LABELS[r["stage"]], f"{r['count']:,}", pct(r["of_previous"]),
            pct(r["of_detected"]),
        )  # fmt: skip
    console.print(funnel)
    t = overall["time_to_reconnect"]
    console.print(
        f"time to reconnect: p50 {hours(t['p50_hours'])}, p90 {hours(t['p90_hours'])} "
        f"({t['reconnected']:,} reconnected)"
    )
    ended = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in overall["outcomes"].items())
    console.print(f"ended: {ended}")
    converting = data["converting_reminder"]
    console.print(
        "converting reminder: "
        + (", ".join(f"#{k}: {v:,}" for k, v in converting.items()) if converting else "none")
    )
    if data["groups"]:
        groups = Table(title=f"By {data['by']}")
        groups.add_column(data["by"])
        for col in ("detected", "notified", "clicked", "result", "confirmed", "conversion",
                    "p50", "p90"):  # fmt: skip
            groups.add_column(col, justify="right")
        for g in data["groups"]:
            c = {r["stage"]: r["count"] for r in g["funnel"]}
            gt = g["time_to_reconnect"]
            groups.add_row(
                safe(g["key"]), *(f"{c[k]:,}" for k in ("detected", "notified", "clicked",
                                                         "result", "confirmed")),
                pct(c["confirmed"] / c["detected"] if c["detected"] else None),
                hours(gt["p50_hours"]), hours(gt["p90_hours"]),
            )  # fmt: skip
        console.print(groups)
    if data["alerts"]:
        alerts = Table(title="Institutions failing far more than the rest")
        for col in ("institution", "clicked", "not reconnected", "share", "lower bound",
                    "rest"):  # fmt: skip
            alerts.add_column(col, justify="left" if col == "institution" else "right")
        for a in data["alerts"]:
            alerts.add_row(
                safe(a["institution"]), f"{a['tried']:,}", f"{a['failed']:,}",
                pct(a["failure_rate"]), pct(a["wilson_lower"]), pct(a["rest_rate"]),
            )  # fmt: skip
        console.print(alerts)
    else:
        console.print("alerts: no institution stands out")
    console.print(data["alert_rule"], style="dim")


@app.command("report")
def report(
    since: str = typer.Option("30d", "--since", help="Episodes detected in the last 30d, 12h, 2w."),
    by: str | None = typer.Option(
        None, "--by", help="Group by reason, institution, channel or reminder."
    ),
    html: Path | None = typer.Option(
        None, "--html", help="Also write one self-contained HTML page (charts) to this file."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """The re-authentication funnel: conversion per stage, time to reconnect, alerts."""
    service.parse(since, by)  # bad values fail before anything is read
    if html is not None and (html.is_dir() or not html.parent.is_dir()):
        raise InputError(f"--html {str(html)!r}: not a file in an existing directory")
    settings = setup(quiet=json_out)
    with runtime(settings) as rt:
        data = service.build(rt, since=since, by=by, now=utc_now())
    if html is not None:
        html.write_text(render(data), encoding="utf-8")
    if json_out:
        print_json(data)
        return
    _print(data)
    if html is not None:
        console.print(f"wrote {safe(html)}")
