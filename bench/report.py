"""Turning one run's rows into ``results.json``, ``RESULTS.md`` and ``results.png``.

Pure functions over plain dicts (:func:`targets`, :func:`markdown`) so they can be checked
without running anything; :func:`plot` is the only one that needs matplotlib.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from bench.report_webhooks import webhook_targets, webhooks_markdown

#: The issue's targets (2 cores, 24 GiB).
TARGET_E2E_PER_S = 1000.0
TARGET_VS_NAIVE_100MS = 50.0
TARGET_VS_RAW_100MS = 0.45
TARGET_VS_NAIVE_0MS = 4.0
TARGET_DUE_QUERY_MS = 100.0
TARGET_RSS_MB = 300.0
#: Worker memory is judged as PSS summed over the tree (issue 17): shared pages counted once.
TARGET_PSS_MB = 250.0
TARGET_RSS_GROWTH = 0.20
#: Worker CPU time per member (process tree), the figure that travels between machines.
TARGET_CPU_MS_PER_MEMBER = 0.6
#: `reauth serve` (the reconnect links): GET page rate; a press's own time at 200/s, MX 100 ms.
TARGET_PAGE_PER_S = 1500.0
TARGET_OWN_P50_MS = 5.0
TARGET_OWN_P99_MS = 25.0


def _main_rows(rows: list[dict[str, Any]], kind: str) -> dict[float, dict[str, Any]]:
    return {r["latency_s"]: r for r in rows if r["kind"] == kind and r.get("series") == "latency"}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per latency: the three rates side by side and the pipeline's ratios to the others."""
    pipe, naive, raw = (_main_rows(rows, k) for k in ("pipeline", "naive", "raw"))
    out = []
    for lat in sorted(pipe):
        p = pipe[lat]["per_s"]
        cpu = pipe[lat].get("cpu_ms_per_member")
        n = naive.get(lat, {}).get("per_s")
        c = raw.get(lat, {}).get("per_s")
        out.append(
            {
                "latency_s": lat,
                "pipeline": p,
                "cpu_ms_per_member": cpu,
                "naive": n,
                "raw": c,
                "vs_naive": round(p / n, 1) if n else None,
                "vs_raw": round(p / c, 2) if c else None,
            }
        )
    return out


def mx_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The MX-side runs (series ``mx``): each pipeline run with the raw ceiling measured right
    after it, the naive rate at the same latency, and the ratios (members/s for Platform, MX
    calls/s for Nexus, where a member may cost three calls)."""
    naive = _main_rows(rows, "naive")
    series = [r for r in rows if r.get("series") == "mx"]
    out = []
    for p, c in itertools.pairwise(series):
        if p["kind"] != "pipeline" or c["kind"] != "raw":
            continue
        n = naive.get(p["latency_s"], {}).get("per_s")
        raw = c["per_s"]
        out.append(
            {
                "api": p.get("api", "nexus"),
                "latency_s": p["latency_s"],
                "members": p["members"],
                "users": p.get("users"),
                "per_s": p["per_s"],
                "mx_calls_per_s": p.get("mx_calls_per_s"),
                "calls_per_member": round(p["mx_calls"] / p["delivered"], 2)
                if p.get("mx_calls") and p["delivered"]
                else None,
                "cpu_ms_per_member": p.get("cpu_ms_per_member"),
                "in_flight": p["in_flight"],
                "naive": n,
                "raw": raw,
                "vs_naive": round(p["per_s"] / n, 1) if n else None,
                "vs_raw": round(p["per_s"] / raw, 2) if raw else None,
                "calls_vs_raw": round(p["mx_calls_per_s"] / raw, 2)
                if raw and p.get("mx_calls_per_s")
                else None,
                "complete": p["complete"],
            }
        )
    return out


def _check(name: str, value: Any, target: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "measured": value, "goal": target, "met": met}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it is met."""
    rows = results["rows"]
    by_lat = {r["latency_s"]: r for r in ratios(rows)}
    out = []
    slow = by_lat.get(0.1)
    if slow:
        out.append(
            _check(
                "end to end at 100 ms",
                f"{slow['pipeline']:.0f} members/s",
                f">= {TARGET_E2E_PER_S:.0f}/s",
                slow["pipeline"] >= TARGET_E2E_PER_S,
            )
        )
        out.append(
            _check(
                "vs naive at 100 ms",
                f"{slow['vs_naive']}x",
                f">= {TARGET_VS_NAIVE_100MS:.0f}x",
                slow["vs_naive"] is not None and slow["vs_naive"] >= TARGET_VS_NAIVE_100MS,
            )
        )
        out.append(
            _check(
                "vs raw ceiling at 100 ms",
                f"{slow['vs_raw']}x",
                f">= {TARGET_VS_RAW_100MS}x",
                slow["vs_raw"] is not None and slow["vs_raw"] >= TARGET_VS_RAW_100MS,
            )
        )
        cpu = slow.get("cpu_ms_per_member")
        if cpu is not None:
            out.append(
                _check(
                    "worker CPU per member at 100 ms",
                    f"{cpu:.2f} ms",
                    f"<= {TARGET_CPU_MS_PER_MEMBER} ms",
                    cpu <= TARGET_CPU_MS_PER_MEMBER,
                )
            )
    fast = by_lat.get(0.0)
    if fast:
        out.append(
            _check(
                "vs naive at 0 ms",
                f"{fast['vs_naive']}x",
                f">= {TARGET_VS_NAIVE_0MS:.0f}x",
                fast["vs_naive"] is not None and fast["vs_naive"] >= TARGET_VS_NAIVE_0MS,
            )
        )
    for m in mx_runs(rows):
        if m["api"] == "platform":
            out.append(
                _check(
                    f"Platform API at {m['latency_s'] * 1000:.0f} ms",
                    f"{m['per_s']:.0f} members/s, {m['vs_raw']}x raw, {m['vs_naive']}x naive",
                    f">= {TARGET_E2E_PER_S:.0f}/s, >= {TARGET_VS_RAW_100MS}x raw",
                    m["per_s"] >= TARGET_E2E_PER_S
                    and m["vs_raw"] is not None
                    and m["vs_raw"] >= TARGET_VS_RAW_100MS,
                )
            )
        else:
            out.append(
                _check(
                    f"Nexus, {m['members'] / (m['users'] or 1):.1f} members per user, "
                    f"at {m['latency_s'] * 1000:.0f} ms",
                    f"{m['mx_calls_per_s']:.0f} MX calls/s, {m['calls_vs_raw']}x raw",
                    f">= {TARGET_VS_RAW_100MS}x raw (MX calls/s)",
                    m["calls_vs_raw"] is not None and m["calls_vs_raw"] >= TARGET_VS_RAW_100MS,
                )
            )
    due = next((r for r in rows if r["kind"] == "due_query"), None)
    if due:
        out.append(
            _check(
                f"due query, {due['due']:,} of {due['total_members']:,}",
                f"{due['one_query_ms']} ms (one query), {due['keyset_100_ms']} ms (pages of 100)",
                f"< {TARGET_DUE_QUERY_MS:.0f} ms via ix_members_due, no Seq Scan",
                due["one_query_ms"] < TARGET_DUE_QUERY_MS and due["uses_index"],
            )
        )
    rss = sorted(
        (r for r in rows if r["kind"] == "pipeline" and r.get("series") == "rss"),
        key=lambda r: r["members"],
    )
    if len(rss) >= 2:
        # PSS when every run has it (RSS sums count the fork's shared pages once per process);
        # older results only have RSS.
        pss = all(r.get("peak_pss_mb") for r in rss)
        key, name, limit = (
            ("peak_pss_mb", "PSS", TARGET_PSS_MB) if pss else ("peak_rss_mb", "RSS", TARGET_RSS_MB)
        )
        lo, hi = rss[0], rss[-1]
        peak = max(r[key] for r in rss)
        growth = (hi[key] - lo[key]) / lo[key]
        out.append(
            _check(
                f"worker peak {name} (process tree)",
                f"{peak} MB",
                f"{'<=' if pss else '<'} {limit:.0f} MB",
                peak <= limit if pss else peak < limit,
            )
        )
        # Flat memory is only shown by runs that finished: a run cut off at its deadline never
        # held the whole backlog's work.
        unfinished = [r for r in rss if r.get("complete") is False]
        out.append(
            _check(
                f"{name} growth {lo['members']:,} -> {hi['members']:,} due",
                f"{growth * 100:+.1f}%"
                + "".join(
                    f" (the {r['members']:,} run did not finish: {r['delivered']:,} delivered)"
                    for r in unfinished
                ),
                f"within {TARGET_RSS_GROWTH * 100:.0f}%, every run complete",
                abs(growth) <= TARGET_RSS_GROWTH and not unfinished,
            )
        )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ms(v: float | None) -> str | None:
    """CPU milliseconds with two decimals (the one-decimal default hides a 0.05 ms step)."""
    return None if v is None else f"{v:.2f}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


#: Hand-written sections of RESULTS.md (findings of a profiling round, taken outside a full
#: run) sit between these markers; a new full run keeps them (see :func:`kept_sections`).
KEEP_BEGIN = "<!-- kept by python -m bench: hand-written section -->"
KEEP_END = "<!-- end of hand-written section -->"


def kept_sections(page: str) -> str:
    """The hand-written blocks (markers included) of a previous RESULTS.md, in order."""
    blocks = []
    rest = page
    while KEEP_BEGIN in rest:
        start = rest.index(KEEP_BEGIN)
        end = rest.find(KEEP_END, start)
        if end < 0:
            break
        blocks.append(rest[start : end + len(KEEP_END)])
        rest = rest[end + len(KEEP_END) :]
    return "\n\n".join(blocks)


def markdown(results: dict[str, Any], kept: str = "") -> str:
    """The human-readable results page (bench/RESULTS.md): the pipeline run and, when there is
    one, the serve run (``results["serve"]``), each with its own command and date; ``kept``
    (:func:`kept_sections` of the previous page) is appended unchanged."""
    page = _markdown(results)
    return f"{page.rstrip()}\n\n{kept}\n" if kept else page


#: What the pipeline runs had on and off (the issue asks for it beside the figures).
FEATURES = (
    "Settings and features of every pipeline run: one Celery worker consuming both queues, "
    "`reauth.events` first (the relay and webhook application; the 2-core profile, no separate "
    "events worker); the batch heartbeat thread on (REAUTH_CLAIM_HEARTBEAT=10s); funnel events "
    "and episode summaries written (always on); delivery to a Redis stream; logs JSON at "
    "WARNING (the one INFO line per batch not emitted, per-member lines are DEBUG). Off: "
    "tracing (OTEL_EXPORTER_OTLP_ENDPOINT unset), notification grouping (REAUTH_NOTIFY_GROUPING "
    "unset). The live MX read before a reminder does not occur: every due member is on its "
    "first notification (reminders_sent 0)."
)


def _finished(results: dict[str, Any]) -> dict[str, str | None]:
    """When each section's run finished (``YYYY-MM-DD HH:MM UTC``, so strings compare)."""
    return {
        "pipeline": results.get("finished_at"),
        "serve": (results.get("serve") or {}).get("finished_at"),
        "webhooks": (results.get("webhooks") or {}).get("finished_at"),
        "funnel": (results.get("funnel") or {}).get("date"),
    }


def _in_sitting(results: dict[str, Any]) -> list[str]:
    """The sections whose run finished inside the last ``python -m bench all`` sitting."""
    sitting = results.get("all")
    if not sitting:
        return []
    lo, hi = sitting["started_at"], sitting["finished_at"]
    return [k for k, at in _finished(results).items() if at is not None and lo <= at <= hi]


def _sitting(results: dict[str, Any]) -> list[str]:
    """One line saying which sections come from one `python -m bench all` sitting (a section
    re-run on its own afterwards is named as such, not passed off as part of it)."""
    sitting = results.get("all")
    if not sitting:
        return []
    inside = _in_sitting(results)
    outside = [k for k, at in _finished(results).items() if at is not None and k not in inside]
    line = (
        f"One sitting: `{sitting['command']}` from {sitting['started_at']} to "
        f"{sitting['finished_at']} ({sitting['duration_s'] / 60:.0f} min) produced the "
        f"{', '.join(inside)} sections"
    )
    line += f"; {', '.join(outside)} were run on their own at other times." if outside else "."
    return [line, ""]


def _other_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The serve, webhook and funnel targets, for the one table at the top of the page."""
    out: list[dict[str, Any]] = []
    if results.get("serve"):
        out += serve_targets(results["serve"])
    if results.get("webhooks"):
        out += webhook_targets(results["webhooks"])
    if results.get("funnel"):
        out.append(results["funnel"]["target"])
    return out


def _markdown(results: dict[str, Any]) -> str:
    if "rows" not in results:  # only a serve, webhooks or funnel run so far
        return "\n".join(
            [
                "# Benchmark results",
                "",
                *serve_markdown(results.get("serve")),
                *webhooks_markdown(results.get("webhooks")),
                *funnel_markdown(results.get("funnel")),
            ]
        )
    cfg, env, rows = results["config"], results["environment"], results["rows"]
    parts = [
        "# Benchmark results",
        "",
        f"Generated by `{results['command']}` on {results['finished_at']} "
        f"({env['cpus']} CPUs, {env['memory_gib']} GiB, Python {env['python']}, "
        f"PostgreSQL {env['postgres']}, Redis {env['redis']}). "
        f"Whole run: {results['duration_s']:.0f} s. Raw figures: `bench/results.json`; "
        "how to run: `bench/README.md`.",
        "",
        *_sitting(results),
        "![members/s against MX latency and concurrency](results.png)",
        "",
        "## Targets",
        "",
        _table(
            ["target", "measured", "goal", "met"],
            [
                [t["target"], t["measured"], t["goal"], "yes" if t["met"] else "**no**"]
                for t in [*targets(results), *_other_targets(results)]
            ],
        ),
        "",
        "## The three side by side (same run, same sandbox)",
        "",
        f"Pipeline: {cfg['due']:,} due among {cfg['members']:,} members, prefork "
        f"concurrency {cfg['processes']}, REAUTH_BATCH_SIZE={cfg['batch_size']}, "
        f"REAUTH_MX_MAX_CONCURRENCY={cfg['mx_concurrency']}, "
        "REAUTH_MX_RATE_LIMIT_PER_SECOND=100000 (raised so the limiter never throttles), "
        f"Nexus API, {cfg['users']} MX users. Naive: {cfg['naive_sample']:,} members, one "
        f"task each, prefork concurrency {cfg['processes']}. Raw: aiohttp, "
        "same in-flight count as the pipeline, Nexus oauth_window_uri with a valid session.",
        "",
        FEATURES,
        "",
        _table(
            [
                "MX latency",
                "pipeline members/s",
                "worker CPU ms/member",
                "naive members/s",
                "raw req/s",
                "pipeline / naive",
                "pipeline / raw",
            ],
            [
                [
                    f"{r['latency_s'] * 1000:.0f} ms",
                    r["pipeline"],
                    _ms(r["cpu_ms_per_member"]),
                    r["naive"],
                    r["raw"],
                    r["vs_naive"],
                    r["vs_raw"],
                ]
                for r in ratios(rows)
            ],
        ),
        "",
    ]
    conc = [r for r in rows if r.get("series") == "concurrency"]
    if conc:
        parts += [
            f"## Against concurrency (in flight), MX latency {cfg['sweep_latency'] * 1000:.0f} ms",
            "",
            _table(
                [
                    "series",
                    "settings",
                    "in flight",
                    "members/s (req/s for raw)",
                    "worker CPU ms/member",
                    "seconds",
                ],
                [
                    [
                        r["kind"],
                        _settings(r),
                        r["in_flight"],
                        r["per_s"],
                        _ms(r.get("cpu_ms_per_member")),
                        r["seconds"],
                    ]
                    for r in sorted(conc, key=lambda r: (r["kind"], r["in_flight"]))
                ],
            ),
            "",
        ]
    mx = mx_runs(rows)
    if mx:
        parts += [
            "## The MX side: Platform API, and Nexus with 1-2 members per user",
            "",
            "Same settings as the pipeline above (rate limit 100,000/s); the raw ceiling is "
            "measured right after each run at the same in-flight count. Platform: one MX call "
            "per member (Basic auth). Nexus with its own users: a new user costs an SSO API "
            "token and a session before its OAuth window, so it is judged in MX calls/s.",
            "",
            _table(
                [
                    "API",
                    "members (users)",
                    "members/s",
                    "MX calls/s (per member)",
                    "worker CPU ms/member",
                    "raw req/s",
                    "/ naive",
                    "/ raw (members)",
                    "/ raw (MX calls)",
                ],
                [
                    [
                        m["api"],
                        f"{m['members']:,} ({m['users']:,})",
                        m["per_s"],
                        f"{m['mx_calls_per_s']} ({m['calls_per_member']})",
                        _ms(m["cpu_ms_per_member"]),
                        m["raw"],
                        m["vs_naive"],
                        m["vs_raw"],
                        m["calls_vs_raw"],
                    ]
                    for m in mx
                ],
            ),
            "",
        ]
    due = next((r for r in rows if r["kind"] == "due_query"), None)
    if due:
        parts += [
            f"## Due query: {due['due']:,} due among {due['total_members']:,} members",
            "",
            "The select inside `repository.claim_due` (`next_attempt_at IS NOT NULL AND "
            "next_attempt_at <= now AND (claim_expires_at IS NULL OR claim_expires_at < now) "
            "ORDER BY next_attempt_at, id`), warm, median of 5:",
            "",
            f"- all {due['due']:,} due ids in one query (`LIMIT {due['due']}`): "
            f"**{due['one_query_ms']} ms** from the client (rows fetched into Python); "
            "server execution time in the EXPLAIN ANALYZE below: "
            f"{due.get('explain_execution_ms')} ms",
            f"- the same walk in keyset pages of 100: **{due['keyset_100_ms']} ms** in total",
            f"- the scan's real claim (`UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) "
            f"RETURNING`, pages of 100, one transaction each): {due['claim_pages_ms']} ms for "
            f"{due['claimed']:,} members",
            f"- index used, no Seq Scan: {'yes' if due['uses_index'] else '**no**'} (select), "
            f"{'yes' if due['claim_uses_index'] else '**no**'} (claim)",
            "",
            "`EXPLAIN (ANALYZE, BUFFERS)` of the one-query form:",
            "",
            "```",
            due["plan"],
            "```",
            "",
            "and of one claim page (rolled back):",
            "",
            "```",
            due["claim_plan"],
            "```",
            "",
        ]
    rss = sorted((r for r in rows if r.get("series") == "rss"), key=lambda r: r["members"])
    if rss:
        parts += [
            "## Worker memory",
            "",
            "Peak memory summed over the Celery worker's process tree (the main process and "
            "its prefork children, RSS sampled every 100 ms with psutil, PSS from "
            "/proc/<pid>/smaps_rollup every 500 ms). RSS counts pages shared by the fork once "
            "per process; PSS shares them out, so it is the tree's real footprint (the figure "
            "judged above).",
            "",
            _table(
                [
                    "due members",
                    "MX latency",
                    "members/s",
                    "worker CPU ms/member",
                    "peak RSS (MB)",
                    "peak PSS (MB)",
                ],
                [
                    [
                        r["members"],
                        f"{r['latency_s'] * 1000:.0f} ms",
                        r["per_s"],
                        _ms(r.get("cpu_ms_per_member")),
                        r["peak_rss_mb"],
                        r.get("peak_pss_mb"),
                    ]
                    for r in rss
                ],
            ),
            "",
        ]
    if PIPELINE_FINDINGS.exists():
        parts += [PIPELINE_FINDINGS.read_text().rstrip(), ""]
    parts += serve_markdown(results.get("serve"))
    parts += webhooks_markdown(results.get("webhooks"))
    parts += funnel_markdown(results.get("funnel"))
    notes = results.get("notes") or []
    if notes:
        parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(parts)


# --- `reauth serve` (python -m bench serve) -------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None when there is nothing to rank."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def post_summary(samples: list[dict[str, Any]], configured_ms: float) -> dict[str, Any]:
    """Percentiles of an open-loop POST run.

    Each sample: ``status``, ``total_ms`` (from the press's due time to the answer),
    ``mx_ms`` (the MX call as the server timed it, from the click's attempt row; None when the
    press made no MX call). The service's own time is ``total_ms - mx_ms``; ``total_ms -
    configured_ms`` (the sandbox's configured latency) is the conservative reading, which also
    counts our MX client's own work and the sandbox's processing as ours.
    """
    ok = [s for s in samples if s["status"] == 303 and s.get("mx_ms") is not None]
    total = [s["total_ms"] for s in ok]
    own = [s["total_ms"] - s["mx_ms"] for s in ok]
    mx = [s["mx_ms"] for s in ok]
    minus_configured = [t - configured_ms for t in total]
    return {
        "answered_303": len(ok),
        "not_303": len(samples) - len(ok),
        "total_p50_ms": _r(percentile(total, 50)),
        "total_p99_ms": _r(percentile(total, 99)),
        "mx_p50_ms": _r(percentile(mx, 50)),
        "mx_p99_ms": _r(percentile(mx, 99)),
        "own_p50_ms": _r(percentile(own, 50)),
        "own_p99_ms": _r(percentile(own, 99)),
        "own_max_ms": _r(max(own, default=None) if own else None),
        "minus_configured_p50_ms": _r(percentile(minus_configured, 50)),
        "minus_configured_p99_ms": _r(percentile(minus_configured, 99)),
    }


def _serve_row(serve: dict[str, Any], kind: str, target: str | None = None) -> dict[str, Any]:
    return next(
        (
            r
            for r in serve["rows"]
            if r["kind"] == kind and (target is None or r.get("target") == target)
        ),
        {},
    )


def _top_post(serve: dict[str, Any]) -> dict[str, Any]:
    """The POST run at the highest rate (the one the targets are judged on)."""
    posts = [r for r in serve["rows"] if r["kind"] == "post"]
    return max(posts, key=lambda r: r["rate"]) if posts else {}


def _cpu_cell(r: dict[str, Any]) -> str:
    c = r.get("cpu_ms") or {}
    return " / ".join(
        f"{c[k]:.2f}" if c.get(k) is not None else "-"
        for k in ("server", "postgres", "loadgen", "sandbox", "other")
    )


def serve_targets(serve: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for `reauth serve`, judged on a serve run."""
    out = []
    page = _serve_row(serve, "get", "page")
    if page:
        out.append(
            _check(
                "GET reconnect page",
                f"{page['per_s']:,.0f} req/s",
                f">= {TARGET_PAGE_PER_S:,.0f} req/s",
                page["per_s"] >= TARGET_PAGE_PER_S,
            )
        )
    post = _top_post(serve)
    if post:
        rate = f"{post['rate']:.0f}/s, MX {post['latency_s'] * 1000:.0f} ms"
        complete = post["not_303"] == 0
        for q, goal in (("p50", TARGET_OWN_P50_MS), ("p99", TARGET_OWN_P99_MS)):
            value = post[f"own_{q}_ms"]
            out.append(
                _check(
                    f"POST own time {q} ({rate})",
                    f"{value:,.1f} ms" if value is not None else "-",
                    f"<= {goal:.0f} ms, every press answered 303",
                    complete and value is not None and value <= goal,
                )
            )
    return out


def _loadavg(v: list[float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if v else "-"


#: Hand-written findings of the serve work (what was tried, before/after figures), kept with the
#: generated section so a rerun does not drop them.
SERVE_FINDINGS = Path(__file__).resolve().parent / "serve_findings.md"
#: The same for the worker tree's CPU (the database, relay and Celery side of issue 17).
PIPELINE_FINDINGS = Path(__file__).resolve().parent / "pipeline_findings.md"


def _serve_clients(cfg: dict[str, Any]) -> str:
    if cfg.get("client", "aiohttp") == "wrk":
        return "GET: wrk; POST: aiohttp on uvloop"
    return "aiohttp on uvloop"


def serve_markdown(serve: dict[str, Any] | None) -> list[str]:
    """The serve run's section of RESULTS.md (nothing when there is no serve run)."""
    if not serve:
        return []
    cfg, env = serve["config"], serve["environment"]
    gets = [r for r in serve["rows"] if r["kind"] == "get"]
    base = _serve_row(serve, "get", "baseline").get("per_s")
    posts = sorted((r for r in serve["rows"] if r["kind"] == "post"), key=lambda r: r["rate"])
    modes = [r for r in serve["rows"] if r["kind"] == "link_mode"]
    parts = [
        "## `reauth serve`: reconnect links under load",
        "",
        f"Generated by `{serve['command']}` on {serve['finished_at']} "
        f"({env['cpus']} CPUs shared by everything below, Python {env['python']}, "
        f"PostgreSQL {env['postgres']}, Redis {env['redis']}, uvicorn {env.get('uvicorn')} "
        f"with uvloop {env.get('uvloop')} and httptools {env.get('httptools')}). "
        f"`reauth serve --workers {cfg.get('workers', 1)}`. "
        f"Whole run: {serve['duration_s']:.0f} s. Servers, the MX sandbox and the load "
        f"generators ({_serve_clients(cfg)}) are separate processes on the same two cores, with "
        "PostgreSQL and Redis. `other` in the CPU columns is what processes outside the "
        "benchmark used meanwhile (load average at the start "
        f"{_loadavg(env.get('loadavg_start'))}, at the end {_loadavg(env.get('loadavg_end'))}).",
        "",
        _table(
            ["target", "measured", "goal", "met"],
            [
                [t["target"], t["measured"], t["goal"], "yes" if t["met"] else "**no**"]
                for t in serve["targets"]
            ],
        ),
        "",
    ]
    if gets:
        parts += [
            f"### GET, {cfg['concurrency']} keep-alive connections, {cfg['seconds']:.0f} s each",
            "",
            "`baseline` is a trivial Starlette page (bench/hello.py) on the same uvicorn "
            "configuration as `reauth serve`, in the same kind of process; `page` is "
            f"`GET /r/{{token}}` cycling through {cfg['links']:,} links (token check, one "
            "database read, the HTML page with its security headers).",
            "",
            _table(
                [
                    "target",
                    "req/s",
                    "vs baseline",
                    "p50 (ms)",
                    "p99 (ms)",
                    "answers",
                    "body bytes",
                    "CPU ms per request: server / PostgreSQL / loadgen / sandbox / other",
                ],
                [
                    [
                        r["target"],
                        r["per_s"],
                        f"{r['per_s'] / base:.2f}" if base else None,
                        r["p50_ms"],
                        r["p99_ms"],
                        ", ".join(f"{k}: {v:,}" for k, v in r["statuses"].items()),
                        r["body_bytes"],
                        _cpu_cell(r),
                    ]
                    for r in gets
                ],
            ),
            "",
        ]
    if posts:
        parts += [
            f"### POST, open loop, sandbox at {posts[0]['latency_s'] * 1000:.0f} ms",
            "",
            f"{cfg['seconds']:.0f} s per rate, every press on a different member's link (after "
            "one second of warm-up presses on other members). A press's time runs from its "
            "due time in the open loop to the answer (303 to MX's URI); answered/s is presses over "
            "the time to the last answer. Own time = total - the "
            "MX call as the server timed it (the click's attempt row); total - configured "
            "latency also counts our MX client's work and the sandbox's as ours. Times in ms.",
            "",
            _table(
                [
                    "presses/s",
                    "presses",
                    "not 303",
                    "total p50 / p99",
                    "MX call p50 / p99",
                    "**own p50 / p99**",
                    "total - configured p50 / p99",
                    "answered/s",
                    "CPU ms per press: server / PostgreSQL / loadgen / sandbox / other",
                ],
                [
                    [
                        f"{r['rate']:.0f}",
                        r["requests"],
                        r["not_303"],
                        f"{_fmt(r['total_p50_ms'])} / {_fmt(r['total_p99_ms'])}",
                        f"{_fmt(r['mx_p50_ms'])} / {_fmt(r['mx_p99_ms'])}",
                        f"**{_fmt(r['own_p50_ms'])} / {_fmt(r['own_p99_ms'])}**",
                        f"{_fmt(r['minus_configured_p50_ms'])} / "
                        f"{_fmt(r['minus_configured_p99_ms'])}",
                        round(r["requests"] / r["seconds"], 1) if r["seconds"] else None,
                        _cpu_cell(r),
                    ]
                    for r in posts
                ],
            ),
            "",
        ]
    if modes:
        parts += [
            "### `REAUTH_LINK_MODE`: MX calls at scan time",
            "",
            f"{modes[0]['members']:,} expired members scanned inline once per mode "
            "(the sandbox's count of minted URIs). A press of Reconnect asks MX once in "
            "either mode.",
            "",
            _table(
                [
                    "mode",
                    "MX URI calls at scan",
                    "per member",
                    "messages with oauth_window_uri",
                    "with reconnect_url",
                ],
                [
                    [
                        r["mode"],
                        r["scan_mx_uri_calls"],
                        r["scan_mx_calls_per_member"],
                        r["with_oauth_window_uri"],
                        r["with_reconnect_url"],
                    ]
                    for r in modes
                ],
            ),
            "",
        ]
    if SERVE_FINDINGS.exists():
        parts += [SERVE_FINDINGS.read_text().rstrip(), ""]
    return parts


def _settings(r: dict[str, Any]) -> str:
    if r["kind"] == "pipeline":
        return f"{r['processes']} proc, batch {r['batch_size']}, MX conc. {r['mx_concurrency']}"
    if r["kind"] == "naive":
        return f"{r['processes']} proc"
    return "one loop"


def plot(results: dict[str, Any], path: Path) -> None:
    """members/s against MX latency (left) and against requests in flight (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"pipeline": ("tab:blue", "o"), "naive": ("tab:red", "s"), "raw": ("tab:gray", "^")}
    labels = {
        "pipeline": "pipeline (end to end)",
        "naive": "naive baseline",
        "raw": "raw aiohttp ceiling (req/s)",
    }
    for kind, (color, marker) in styles.items():
        pts = sorted(_main_rows(rows, kind).values(), key=lambda r: r["latency_s"])
        if pts:
            left.plot(
                [r["latency_s"] * 1000 for r in pts],
                [r["per_s"] for r in pts],
                marker=marker,
                color=color,
                label=labels[kind],
            )
        pts = sorted(
            (r for r in rows if r["kind"] == kind and r.get("series") == "concurrency"),
            key=lambda r: r["in_flight"],
        )
        if pts:
            right.plot(
                [r["in_flight"] for r in pts],
                [r["per_s"] for r in pts],
                marker=marker,
                color=color,
                label=labels[kind],
            )
    left.set(
        xlabel="MX latency (ms)",
        ylabel="members/s",
        yscale="log",
        title="Throughput against MX latency",
    )
    right.set(
        xlabel="requests in flight",
        ylabel="members/s",
        xscale="log",
        yscale="log",
        title=f"Against concurrency at {results['config']['sweep_latency'] * 1000:.0f} ms",
    )
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"reauth benchmark, {results['environment']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- `reauth report` (python -m bench funnel) -----------------------------------------------------


def funnel_markdown(funnel: dict[str, Any] | None) -> list[str]:
    """The funnel report's section: the target, every case, the plans."""
    if not funnel:
        return []
    t = funnel["target"]
    env = funnel["environment"]
    counts = funnel["counts"]
    parts = [
        f"## `reauth report`: the funnel over {funnel['counts']['episodes']:,} episodes "
        "(`python -m bench funnel`)",
        "",
        f"`{funnel['command'].strip()}` on {funnel['date']} ({env['cpus']} CPUs, PostgreSQL "
        f"{env['postgres']}). {counts['episodes']:,} episodes and {counts['funnel_events']:,} "
        f"funnel events seeded with generate_series (seconds: {funnel['seed_s']}), detected over "
        "400 days in random order, so a window's rows lie scattered over the whole heap (the "
        "worst case: in production rows arrive in detection order). Timed: "
        "`worker.service.report.build` (the four grouped queries on `episodes` "
        "and the core's arithmetic), median of the runs. Load average "
        f"{funnel['loadavg']['start']} at the start, {funnel['loadavg']['end']} at the end "
        "(anything else running on the same cores shows there).",
        "",
        _table(["target", "measured", "goal", "met"],
               [[t["target"], t["measured"], t["goal"], "yes" if t["met"] else "**no**"]]),
        "",
        _table(
            ["--since", "--by", "episodes in window", "groups", "median s", "max s", "alerts"],
            [[c["since"], c["by"] or "-", f"{c['detected']:,}", c["groups"],
              f"{c['median_s']:.3f}", f"{c['max_s']:.3f}", ", ".join(c["alerts"]) or "-"]
             for c in funnel["cases"]],
        ),
        "",
        "EXPLAIN (ANALYZE, BUFFERS) of the statements one `--since 30d` report runs (an index "
        "range scan of `ix_episodes_detected_at`); for `--since 365d` the window holds most of "
        "the table and PostgreSQL rightly reads it sequentially (its plans are in results.json).",
        "",
    ]  # fmt: skip
    for plan in funnel["plans"]["30d"]:
        parts += ["```", plan, "```", ""]
    return parts


def write_section(out: Path, key: str, run: dict[str, Any]) -> Path:
    """Put a scenario's run under ``key`` in ``out``/results.json (the other runs kept) and
    rewrite RESULTS.md around it, keeping the hand-written sections; returns results.json."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results[key] = run
    path.write_text(json.dumps(results, indent=2) + "\n")
    page = out / "RESULTS.md"
    kept = kept_sections(page.read_text()) if page.exists() else ""
    page.write_text(markdown(results, kept))
    return path


def write_and_tell(out: Path, key: str, run: dict[str, Any], targets: list[dict[str, Any]]) -> None:
    """:func:`write_section`, then print each target's verdict and where the pages went."""
    path = write_section(out, key, run)
    for t in targets:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']} ({t['goal']})")
    print(f"wrote {path}, {out / 'RESULTS.md'}")
