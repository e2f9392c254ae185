"""``uv run python -m bench funnel``: ``reauth report`` over 1,000,000 episodes on PostgreSQL.

Seeds a database of its own (``reauth_bench_funnel``, dropped and recreated) with generate_series:
members, episodes spread over 400 days (so a 30-day report reads about 7.5% of them) with
realistic stage shares, and their funnel events. Then times the report's service function
(:func:`worker.service.report.build`: the four grouped queries and the core's arithmetic) for
several windows and groupings, median of ``--repeat`` runs, and records ``EXPLAIN (ANALYZE,
BUFFERS)`` of every statement the report ran (captured as executed, not rebuilt). Results go
under ``funnel`` in bench/results.json and into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench import infra, report

HERE = Path(__file__).resolve().parent
DB = "reauth_bench_funnel"
#: The report's target on PostgreSQL (issue 15).
TARGET_S = 2.0

SEED_SQL = [
    # Members: the episodes' foreign key.
    """
    INSERT INTO members (member_guid, user_guid, institution_code, is_oauth, channel,
        is_being_aggregated, reauth_state, episode, reminders_sent, attempts,
        created_at, updated_at)
    SELECT 'MBR-' || g, 'USR-' || (g / 2), 'inst_' || (g % 40), true,
        CASE WHEN g % 4 = 0 THEN 'APP' ELSE 'BROWSER' END, false, 'idle', 0, 0, 0, now(), now()
    FROM generate_series(1, :members) AS g
    """,
    # Episodes: r drives every stage, so shares are stable; inst_7 fails most OAuth attempts.
    """
    INSERT INTO episodes (member_id, episode, reason, institution_code, channel, detected_at,
        detected_how, link_at, notified_at, clicked_at, opened_at, result_at, result,
        confirmed_at, ended_at, reminders_sent, converting_reminder, reconnect_s, outcome)
    SELECT m.id, e.n,
        (ARRAY['revoked','expired','abandoned','oauth_failed'])[1 + (e.k * 4)::int % 4],
        m.institution_code, m.channel, e.at,
        (ARRAY['scan','webhook','import'])[1 + (e.k * 3)::int % 3],
        e.at + interval '1 second',
        CASE WHEN e.r < 0.95 THEN e.at + interval '2 seconds' END,
        CASE WHEN e.r < 0.55 THEN e.at + e.r * interval '50 hours' END,
        CASE WHEN e.r < 0.45 THEN e.at + e.r * interval '50 hours' END,
        CASE WHEN e.r < 0.45 THEN e.at + e.r * interval '50 hours' END,
        CASE WHEN e.r < 0.45 THEN CASE WHEN e.r < 0.35 AND m.institution_code <> 'inst_7'
             THEN 'success' ELSE 'CANCELLED' END END,
        CASE WHEN e.r < 0.35 AND m.institution_code <> 'inst_7'
             THEN e.at + e.r * interval '60 hours' END,
        CASE WHEN e.r < 0.35 AND m.institution_code <> 'inst_7'
             THEN e.at + e.r * interval '60 hours' WHEN e.r > 0.9 THEN e.at + interval '5 days'
        END,
        1 + (e.r * 7)::int % 3,
        CASE WHEN e.r < 0.35 AND m.institution_code <> 'inst_7' THEN 1 + (e.r * 7)::int % 3 END,
        CASE WHEN e.r < 0.35 AND m.institution_code <> 'inst_7'
             THEN (e.r * 60 * 3600)::int END,
        CASE WHEN e.r < 0.35 AND m.institution_code <> 'inst_7' THEN 'reconnected'
             WHEN e.r > 0.97 THEN 'gone' WHEN e.r > 0.9 THEN 'gave_up' END
    FROM members m
    CROSS JOIN LATERAL (
        SELECT n, random() AS r, random() AS k,
               now() - random() * interval '400 days' AS at
        FROM generate_series(1, :per_member) AS n
        WHERE m.id IS NOT NULL  -- correlated: fresh random values for every member
    ) e
    """,
    # Their events: one row per stage reached.
    """
    INSERT INTO funnel_events (member_id, episode, stage, at, reminder, detail, how)
    SELECT member_id, episode, s.stage, s.at, s.reminder, s.detail, s.how
    FROM episodes
    CROSS JOIN LATERAL (VALUES
        ('detected', detected_at, NULL::int, reason, detected_how),
        ('link', link_at, 1, NULL, NULL),
        ('notified', notified_at, 1, NULL, NULL),
        ('clicked', clicked_at, NULL, NULL, NULL),
        ('opened', opened_at, NULL, NULL, NULL),
        ('result', result_at, NULL, result, NULL),
        ('confirmed', confirmed_at, NULL, NULL, NULL)
    ) AS s(stage, at, reminder, detail, how)
    WHERE s.at IS NOT NULL
    """,
    "ANALYZE members",
    "ANALYZE episodes",
    "ANALYZE funnel_events",
]

CASES = [("30d", None), ("30d", "institution"), ("30d", "reminder"), ("7d", "reason"),
         ("365d", None)]  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench funnel", description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=1_000_000, help="episodes seeded (1,000,000)")
    p.add_argument("--per-member", type=int, default=10, help="episodes per member (10)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per case (median)")
    p.add_argument("--out", type=Path, default=HERE, help="where results.json and RESULTS.md are")
    p.add_argument("--keep-db", action="store_true", help=f"do not drop {DB} at the end")
    return p.parse_args(argv)


def seed(url: str, episodes: int, per_member: int) -> dict[str, float]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    timings: dict[str, float] = {}
    try:
        for name, sql in zip(["members", "episodes", "events", "analyze", "analyze", "analyze"],
                             SEED_SQL, strict=True):  # fmt: skip
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(
                    text(sql), {"members": episodes // per_member, "per_member": per_member}
                )
            timings[name] = round(timings.get(name, 0) + time.perf_counter() - started, 1)
    finally:
        engine.dispose()
    return timings


def run_case(rt: Any, since: str, by: str | None, repeat: int) -> dict[str, Any]:
    from worker.service import report as service

    seconds = []
    data: dict[str, Any] = {}
    for _ in range(repeat):
        started = time.perf_counter()
        data = service.build(rt, since=since, by=by, now=datetime.now(UTC))
        seconds.append(time.perf_counter() - started)
    return {
        "since": since,
        "by": by,
        "median_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
        "runs": repeat,
        "detected": data["overall"]["funnel"][0]["count"],
        "groups": len(data["groups"]),
        "alerts": [a["institution"] for a in data["alerts"]],
    }


def explain(rt: Any, since: str, by: str | None) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement one report ran, captured as executed."""
    from worker.service import report as service

    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    event.listen(rt.engine, "before_cursor_execute", capture)
    try:
        service.build(rt, since=since, by=by, now=datetime.now(UTC))
    finally:
        event.remove(rt.engine, "before_cursor_execute", capture)
    plans = []
    raw = rt.engine.raw_connection()
    try:
        cur = raw.cursor()
        for statement, params in seen:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            plans.append("\n".join(row[0] for row in cur.fetchall()))
    finally:
        raw.close()
    return plans


def main(argv: list[str]) -> None:
    from worker.config import load_settings
    from worker.runtime import Runtime

    args = parse(argv)
    url = infra.fresh_database(DB)
    load_start = _loadavg()
    started = time.perf_counter()
    seeded = seed(url, args.episodes, args.per_member)
    print(f"seeded in {time.perf_counter() - started:.1f} s: {seeded}")
    rt = Runtime(load_settings(database_url=url))
    try:
        counts = {
            "episodes": infra.scalar(url, "SELECT count(*) FROM episodes"),
            "funnel_events": infra.scalar(url, "SELECT count(*) FROM funnel_events"),
        }
        cases = []
        for since, by in CASES:
            case = run_case(rt, since, by, args.repeat)
            print(f"report --since {since} --by {by}: median {case['median_s']} s "
                  f"({case['detected']:,} episodes)")  # fmt: skip
            cases.append(case)
        plans = {"30d": explain(rt, "30d", None), "365d": explain(rt, "365d", None)}
        env = infra.environment(url)
    finally:
        rt.close()
        if not args.keep_db:
            infra.drop_database(DB)
    main_case = cases[0]
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "uv run python -m bench funnel " + " ".join(argv),
        "counts": counts,
        "seed_s": seeded,
        "cases": cases,
        "plans": plans,
        "environment": env,
        "loadavg": {"start": load_start, "end": _loadavg()},
        "target": {
            "target": f"reauth report, 30d, {counts['episodes']:,} episodes",
            "measured": f"{main_case['median_s']} s",
            "goal": f"< {TARGET_S} s",
            "met": main_case["median_s"] < TARGET_S,
        },
    }
    write(result, args.out)


def _loadavg() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def write(result: dict[str, Any], out: Path) -> None:
    """Put the run under ``funnel`` in results.json (other runs kept) and rewrite RESULTS.md."""
    report.write_and_tell(out, "funnel", result, [result["target"]])
