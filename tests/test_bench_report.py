"""The benchmark's pure report helpers: ratios, target verdicts and the markdown page.

No timing here (benchmarks live in bench/); these pin how a run's rows are judged and shown.
"""

from __future__ import annotations

from typing import Any

from bench import report


def _results() -> dict[str, Any]:
    rows = [
        {
            "kind": "pipeline",
            "series": "latency",
            "latency_s": 0.1,
            "per_s": 1000.0,
            "in_flight": 200,
            "seconds": 20.0,
            "members": 20_000,
            "cpu_ms_per_member": 0.55,
            "peak_rss_mb": 250.0,
            "peak_pss_mb": 190.0,
        },
        {
            "kind": "naive",
            "series": "latency",
            "latency_s": 0.1,
            "per_s": 18.0,
            "in_flight": 2,
            "seconds": 55.0,
        },
        {
            "kind": "raw",
            "series": "latency",
            "latency_s": 0.1,
            "per_s": 2000.0,
            "in_flight": 200,
            "seconds": 3.0,
        },
        {
            "kind": "pipeline",
            "series": "latency",
            "latency_s": 0.0,
            "per_s": 500.0,
            "in_flight": 200,
            "seconds": 40.0,
            "cpu_ms_per_member": 1.25,
        },
        {
            "kind": "naive",
            "series": "latency",
            "latency_s": 0.0,
            "per_s": 200.0,
            "in_flight": 2,
            "seconds": 5.0,
        },
        {
            "kind": "pipeline",
            "series": "rss",
            "latency_s": 0.1,
            "per_s": 1000.0,
            "members": 20_000,
            "cpu_ms_per_member": 0.57,
            "peak_rss_mb": 250.0,
            "peak_pss_mb": 200.0,
        },
        {
            "kind": "pipeline",
            "series": "rss",
            "latency_s": 0.1,
            "per_s": 1000.0,
            "members": 100_000,
            "cpu_ms_per_member": 0.61,
            "peak_rss_mb": 320.0,
            "peak_pss_mb": 230.0,
        },
        {
            "kind": "due_query",
            "series": "due",
            "total_members": 1_000_000,
            "due": 10_000,
            "one_query_ms": 40.0,
            "keyset_100_ms": 90.0,
            "claim_pages_ms": 500.0,
            "claimed": 10_000,
            "uses_index": True,
            "claim_uses_index": True,
            "plan": "Index Scan using ix_members_due",
            "claim_plan": "ix_members_due",
        },
    ]
    return {
        "command": "uv run python -m bench",
        "finished_at": "2026-01-01 00:00 UTC",
        "duration_s": 1.0,
        "config": {
            "due": 20_000,
            "members": 200_000,
            "processes": 2,
            "batch_size": 100,
            "mx_concurrency": 100,
            "users": 100,
            "naive_sample": 1000,
            "sweep_latency": 0.1,
        },
        "environment": {
            "cpus": 2,
            "memory_gib": 24,
            "python": "3.11",
            "postgres": "15",
            "redis": "7",
        },
        "rows": rows,
    }


def test_ratios_put_the_three_side_by_side_per_latency() -> None:
    by_lat = {r["latency_s"]: r for r in report.ratios(_results()["rows"])}
    assert by_lat[0.1]["vs_naive"] == 55.6
    assert by_lat[0.1]["vs_raw"] == 0.5
    assert by_lat[0.0]["vs_naive"] == 2.5
    assert by_lat[0.0]["raw"] is None
    assert by_lat[0.0]["vs_raw"] is None
    assert by_lat[0.1]["cpu_ms_per_member"] == 0.55
    assert by_lat[0.0]["cpu_ms_per_member"] == 1.25


def test_targets_are_judged_against_the_issue_thresholds() -> None:
    verdicts = {t["target"]: t["met"] for t in report.targets(_results())}
    assert verdicts["end to end at 100 ms"] is True
    assert verdicts["vs naive at 100 ms"] is True
    assert verdicts["vs raw ceiling at 100 ms"] is True
    assert verdicts["vs naive at 0 ms"] is False
    assert verdicts["due query, 10,000 of 1,000,000"] is True
    assert verdicts["worker CPU per member at 100 ms"] is True  # 0.55 ms <= 0.6
    # Memory is judged as PSS (230 MB <= 250), not the RSS sum (320 MB).
    assert verdicts["worker peak PSS (process tree)"] is True
    assert verdicts["PSS growth 20,000 -> 100,000 due"] is True  # +15%
    assert "worker peak RSS (process tree)" not in verdicts


def test_flat_memory_needs_every_run_to_finish() -> None:
    results = _results()
    big = results["rows"][6]
    assert big["members"] == 100_000
    big.update(complete=False, delivered=30_000)
    targets = {t["target"]: t for t in report.targets(results)}
    growth = targets["PSS growth 20,000 -> 100,000 due"]
    assert growth["met"] is False  # +15% is within 20%, but the 100k run was cut off
    assert "the 100,000 run did not finish: 30,000 delivered" in growth["measured"]
    big["complete"] = True
    again = {t["target"]: t["met"] for t in report.targets(results)}
    assert again["PSS growth 20,000 -> 100,000 due"] is True


def test_memory_falls_back_to_rss_for_runs_without_pss() -> None:
    results = _results()
    for r in results["rows"]:
        r.pop("peak_pss_mb", None)
        r.pop("cpu_ms_per_member", None)
    verdicts = {t["target"]: t["met"] for t in report.targets(results)}
    assert verdicts["worker peak RSS (process tree)"] is False  # 320 MB at 100k
    assert verdicts["RSS growth 20,000 -> 100,000 due"] is False  # +28%
    assert "worker CPU per member at 100 ms" not in verdicts
    page = report.markdown(results)
    assert "| 100 ms | 1,000.0 | - | 18.0 |" in page


def test_cpu_per_member_misses_above_the_target() -> None:
    results = _results()
    results["rows"][0]["cpu_ms_per_member"] = 0.75
    verdicts = {t["target"]: t["met"] for t in report.targets(results)}
    assert verdicts["worker CPU per member at 100 ms"] is False


def test_markdown_shows_every_target_and_the_plan() -> None:
    page = report.markdown(_results())
    assert "| vs naive at 0 ms | 2.5x | >= 4x | **no** |" in page
    assert "| worker CPU per member at 100 ms | 0.55 ms | <= 0.6 ms | yes |" in page
    assert "| worker peak PSS (process tree) | 230.0 MB | <= 250 MB | yes |" in page
    # CPU ms/member beside members/s, in the main table and the memory table.
    assert "| 100 ms | 1,000.0 | 0.55 | 18.0 | 2,000.0 | 55.6 | 0.5 |" in page
    assert "| 100,000 | 100 ms | 1,000.0 | 0.61 | 320.0 | 230.0 |" in page
    assert "Index Scan using ix_members_due" in page
    assert "![members/s against MX latency and concurrency](results.png)" in page


# --- `reauth serve` (python -m bench serve) -------------------------------------------------------


def _serve() -> dict[str, Any]:
    cpu = {"server": 1.5, "postgres": 0.3, "loadgen": 0.4, "sandbox": 0.0, "other": 0.1}

    def get(target: str, per_s: float) -> dict[str, Any]:
        return {
            "kind": "get", "target": target, "concurrency": 32, "per_s": per_s,
            "p50_ms": 10.0, "p99_ms": 20.0, "statuses": {"200": 1000}, "body_bytes": 3700,
            "cpu_ms": cpu,
        }  # fmt: skip

    def post(rate: float, own_p50: float, own_p99: float, not_303: int = 0) -> dict[str, Any]:
        return {
            "kind": "post", "rate": rate, "latency_s": 0.1, "requests": int(rate * 10),
            "not_303": not_303, "seconds": 10.1, "total_p50_ms": 104.0, "total_p99_ms": 130.0,
            "mx_p50_ms": 101.0, "mx_p99_ms": 110.0, "own_p50_ms": own_p50,
            "own_p99_ms": own_p99, "minus_configured_p50_ms": 4.0,
            "minus_configured_p99_ms": 30.0, "cpu_ms": cpu,
        }  # fmt: skip

    def mode(name: str, calls: int) -> dict[str, Any]:
        return {
            "kind": "link_mode", "mode": name, "members": 200, "scan_mx_uri_calls": calls,
            "scan_mx_calls_per_member": calls / 200, "with_oauth_window_uri": calls,
            "with_reconnect_url": 200,
        }  # fmt: skip

    return {
        "command": "uv run python -m bench serve",
        "finished_at": "2026-01-01 00:00 UTC",
        "duration_s": 120.0,
        "config": {"seconds": 10.0, "concurrency": 32, "links": 3600},
        "environment": {"cpus": 2, "python": "3.11", "postgres": "15", "redis": "7"},
        "rows": [
            mode("both", 200),
            mode("reconnect", 0),
            get("baseline", 4000.0),
            get("page", 1600.0),
            post(50.0, 2.0, 9.0),
            post(200.0, 3.0, 26.0),
        ],
    }


def test_post_summary_subtracts_the_recorded_mx_call_per_press() -> None:
    samples = [{"status": 303, "total_ms": 104.0 + i, "mx_ms": 101.0} for i in range(100)] + [
        {"status": 503, "total_ms": 5.0, "mx_ms": None}
    ]
    s = report.post_summary(samples, 100.0)
    assert s["answered_303"] == 100
    assert s["not_303"] == 1
    assert s["own_p50_ms"] == 52.0  # 104 + 49 - 101
    assert s["own_p99_ms"] == 101.0  # 104 + 98 - 101
    assert s["minus_configured_p50_ms"] == 53.0
    assert report.percentile([], 50) is None


def test_serve_targets_are_judged_at_the_highest_rate() -> None:
    verdicts = {t["target"]: t["met"] for t in report.serve_targets(_serve())}
    assert verdicts == {
        "GET reconnect page": True,
        "POST own time p50 (200/s, MX 100 ms)": True,
        "POST own time p99 (200/s, MX 100 ms)": False,  # 26 ms
    }


def test_serve_section_is_added_to_the_page_and_kept_alone() -> None:
    results = _results()
    serve = _serve()
    serve["targets"] = report.serve_targets(serve)
    results["serve"] = serve
    page = report.markdown(results)
    assert page.startswith("# Benchmark results")
    assert "## `reauth serve`: reconnect links under load" in page
    assert "| page | 1,600.0 | 0.40 |" in page
    assert "| both | 200 | 1.0 | 200 | 200 |" in page
    assert "| reconnect | 0 | 0.0 | 0 | 200 |" in page
    alone = report.markdown({"serve": serve})
    assert "## `reauth serve`" in alone
    assert "## Targets" not in alone


def _webhook_run(per_s: float, p99: float, stored: int, p50_e2e: float) -> dict[str, Any]:
    ingest = {
        "kind": "ingest", "connections": 16, "serve_workers": 1, "requests": 1000,
        "non_2xx": 0, "connect_errors": 0, "read_errors": 0, "write_errors": 0, "timeouts": 0,
        "per_s": per_s, "p50_ms": 5.0, "p99_ms": p99, "stored": stored, "vs_baseline": 0.1,
        "cpu_ms": {"server": 0.5, "postgres": 0.1, "redis": 0.01, "other": 0.2},
    }  # fmt: skip
    e2e = {
        "kind": "e2e", "events": 1000, "rate": 1000.0, "latency_s": 0.05, "processes": 2,
        "statuses": {"204": 1000}, "notified": 1000, "p50_ms": p50_e2e, "p90_ms": 1.0,
        "p99_ms": 1.0, "max_ms": 1.0, "all_s": 3.0, "inbox": {"applied": 1000},
        "phases_p50_ms": {"stored": 5.0, "applied": 50.0, "uri_attempt": 90.0, "outbox": 90.0,
                          "sent": 99.0},
    }  # fmt: skip
    opened = {
        "kind": "ingest_open", "serve_workers": 2, "rate": 1000.0, "requests": 1000,
        "statuses": {"204": 1000}, "per_s": 1000.0, "p50_ms": 3.0, "p90_ms": 5.0,
        "p99_ms": p99, "max_ms": 40.0, "client_lag_p99_ms": 1.0, "stored": stored,
        "cpu_ms": {"server": 0.5, "postgres": 0.1, "redis": 0.01, "other": 0.2},
    }  # fmt: skip
    return {
        "command": "uv run python -m bench webhooks", "finished_at": "now", "duration_s": 60.0,
        "config": {"seconds": 10.0}, "environment": {"cpus": 2},
        "rows": [{"kind": "ingest_baseline", "per_s": 10_000.0, "p50_ms": 1.0, "p99_ms": 2.0},
                 ingest, opened, e2e],
    }  # fmt: skip


def test_webhook_targets_need_rate_p99_and_every_204_stored() -> None:
    from bench import report_webhooks

    met = report_webhooks.webhook_targets(_webhook_run(1200.0, 20.0, 1003, 1500.0))
    assert [t["met"] for t in met] == [True, True, True]
    slow = report_webhooks.webhook_targets(_webhook_run(1200.0, 30.0, 1000, 2500.0))
    assert [t["met"] for t in slow] == [False, False, False]
    lost = report_webhooks.webhook_targets(_webhook_run(1200.0, 20.0, 999, 1500.0))
    assert lost[0]["met"] is False  # a 204 without its row is never a pass
    assert lost[1]["met"] is False


def test_webhook_section_is_added_to_the_page() -> None:
    run = _webhook_run(1200.0, 20.0, 1000, 1500.0)
    from bench import report_webhooks

    run["targets"] = report_webhooks.webhook_targets(run)
    page = report.markdown({"webhooks": run})
    assert "## MX webhooks: intake and webhook-to-stream latency" in page
    assert "Where the time goes" in page
    assert "### Intake at a fixed offered rate (open loop)" in page


def test_hand_written_sections_survive_a_new_run() -> None:
    note = f"{report.KEEP_BEGIN}\n## Speed round two\n\nCPU figures.\n{report.KEEP_END}"
    old = f"# Benchmark results\n\n## Targets\n\nold table\n\n{note}\n\n## Notes\n"
    kept = report.kept_sections(old)
    assert kept == note
    page = report.markdown(_results(), kept)
    assert page.startswith("# Benchmark results")
    assert page.rstrip().endswith(report.KEEP_END)
    assert page.count("## Speed round two") == 1
    assert "old table" not in page
    assert report.kept_sections(page) == note  # and the run after that keeps it again
    assert report.kept_sections("# Benchmark results\n") == ""


def test_write_section_replaces_one_side_run_and_keeps_the_others(tmp_path: Any) -> None:
    """``bench serve`` and ``bench funnel`` each put their run under their key of results.json
    (the one writer of both), keep every other key and rewrite RESULTS.md from the whole."""
    import json
    from pathlib import Path

    real = json.loads((Path(report.__file__).parent / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps(real))
    fresh = {**real["funnel"], "marker": "this run"}

    path = report.write_section(tmp_path, "funnel", fresh)

    stored = json.loads(path.read_text())
    assert stored["funnel"] == fresh
    assert {k: v for k, v in stored.items() if k != "funnel"} == {
        k: v for k, v in real.items() if k != "funnel"
    }
    assert (tmp_path / "RESULTS.md").read_text() == report.markdown(stored)


def test_one_sitting_names_its_sections_and_gathers_every_target() -> None:
    """`python -m bench all` records its sitting; the page claims for it only the sections that
    finished inside it, and the table at the top holds every surface's targets."""
    results = _results()
    results["finished_at"] = "2026-11-30 04:40 UTC"
    serve = {**_serve(), "finished_at": "2026-11-30 04:45 UTC"}
    serve["targets"] = report.serve_targets(serve)
    results["serve"] = serve
    hooks = {**_webhook_run(1200.0, 20.0, 1000, 1500.0), "finished_at": "2026-11-30 03:00 UTC"}
    from bench import report_webhooks

    hooks["targets"] = report_webhooks.webhook_targets(hooks)
    results["webhooks"] = hooks
    results["all"] = {
        "command": "uv run python -m bench all",
        "started_at": "2026-11-30 04:30 UTC",
        "finished_at": "2026-11-30 04:55 UTC",
        "duration_s": 1500.0,
    }
    page = report.markdown(results)
    assert "produced the pipeline, serve sections; webhooks were run on their own" in page
    top = page.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "| GET reconnect page |" in top
    assert "| CONNECTION_STATUS webhook to stream, p50 (1,000 events) |" in top
    assert "| end to end at 100 ms |" in top
    del results["all"]
    assert "One sitting" not in report.markdown(results)


def test_mx_runs_judge_platform_in_members_and_nexus_in_mx_calls() -> None:
    """Series ``mx``: each pipeline run against the raw ceiling measured right after it;
    Platform by members/s, Nexus with its own users by MX calls/s (a member costs up to 3)."""
    results = _results()
    base = {"kind": "pipeline", "series": "mx", "latency_s": 0.1, "in_flight": 400}
    results["rows"] += [
        {
            **base,
            "api": "platform",
            "members": 20_000,
            "users": 100,
            "per_s": 1100.0,
            "mx_calls": 20_000,
            "mx_calls_per_s": 1100.0,
            "delivered": 20_000,
            "complete": True,
        },
        {"kind": "raw", "series": "mx", "latency_s": 0.1, "in_flight": 400, "per_s": 2000.0},
        {
            **base,
            "api": "nexus",
            "members": 20_000,
            "users": 13_333,
            "per_s": 300.0,
            "mx_calls": 46_666,
            "mx_calls_per_s": 700.0,
            "delivered": 20_000,
            "complete": True,
        },
        {"kind": "raw", "series": "mx", "latency_s": 0.1, "in_flight": 400, "per_s": 2000.0},
    ]
    platform, nexus = report.mx_runs(results["rows"])
    assert (platform["vs_raw"], platform["vs_naive"]) == (0.55, 61.1)
    assert (nexus["calls_vs_raw"], nexus["calls_per_member"]) == (0.35, 2.33)
    verdicts = {t["target"]: t["met"] for t in report.targets(results)}
    assert verdicts["Platform API at 100 ms"] is True
    assert verdicts["Nexus, 1.5 members per user, at 100 ms"] is False
    page = report.markdown(results)
    assert "## The MX side: Platform API, and Nexus with 1-2 members per user" in page
    assert "| nexus | 20,000 (13,333) | 300.0 | 700.0 (2.33) |" in page
