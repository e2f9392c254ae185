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
            "peak_rss_mb": 250.0,
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
            "peak_rss_mb": 250.0,
        },
        {
            "kind": "pipeline",
            "series": "rss",
            "latency_s": 0.1,
            "per_s": 1000.0,
            "members": 100_000,
            "peak_rss_mb": 320.0,
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


def test_targets_are_judged_against_the_issue_thresholds() -> None:
    verdicts = {t["target"]: t["met"] for t in report.targets(_results())}
    assert verdicts["end to end at 100 ms"] is True
    assert verdicts["vs naive at 100 ms"] is True
    assert verdicts["vs raw ceiling at 100 ms"] is True
    assert verdicts["vs naive at 0 ms"] is False
    assert verdicts["due query, 10,000 of 1,000,000"] is True
    assert verdicts["worker peak RSS (process tree)"] is False  # 320 MB at 100k
    assert verdicts["RSS growth 20,000 -> 100,000 due"] is False  # +28%


def test_markdown_shows_every_target_and_the_plan() -> None:
    page = report.markdown(_results())
    assert "| vs naive at 0 ms | 2.5x | >= 4x | **no** |" in page
    assert "Index Scan using ix_members_due" in page
    assert "![members/s against MX latency and concurrency](results.png)" in page
