"""``uv run python -m bench``: the pipeline, the naive baseline and the raw ceiling in one run.

Needs the local PostgreSQL (a database ``reauth_bench`` is dropped and recreated) and Redis
(db 13 is flushed). Writes ``bench/results.json``, ``bench/RESULTS.md`` and
``bench/results.png``. See bench/README.md for what each figure means.

    uv run python -m bench            # full run (~15 min on 2 cores)
    uv run python -m bench --quick    # smaller sizes, same shape (~3 min)
    uv run python -m bench serve      # `reauth serve` under load (bench/serve.py, ~2 min)
    uv run python -m bench webhooks   # MX webhook intake and webhook-to-stream latency
    uv run python -m bench funnel     # `reauth report` over 1,000,000 episodes (bench/funnel.py)
    uv run python -m bench all        # all four in one run, one page (~11 min on 2 cores)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import infra, report, runs

HERE = Path(__file__).resolve().parent

#: Conditions a reader needs to weigh the figures (written into RESULTS.md).
NOTES = [
    "Everything shares the same cores: the sandbox (one uvicorn process on h11, no httptools or "
    "uvloop installed), PostgreSQL, Redis, the Celery worker(s) and the raw loop. The raw "
    "ceiling is therefore the sandbox's own limit on this machine, not MX's.",
    "Pipeline worker: `celery -A worker.celery_app worker -P prefork -c <processes>` with "
    "REAUTH_LOG_LEVEL=WARNING (JSON), REAUTH_MX_RATE_LIMIT_PER_SECOND=100000; the scan is "
    "enqueued as `reauth.scan` (what beat sends); the clock runs from that send to XLEN of "
    "`reauth:notifications` reaching the number of due members (each one delivered once).",
    "Naive baseline (bench/naive.py): one task per member, sync httpx, ORM + commit per member, "
    "XADD after the commit; each process caches Nexus sessions, with one MX user per 100 "
    "sampled members so session set-up stays a small share of its calls.",
    "Profiles of a pool process (bench/profile_batch.py, pyinstrument + cProfile) are "
    "summarised in bench/README.md.",
]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (< 3 min)")
    p.add_argument("--members", type=int, help="N members seeded (default 200,000; quick 50,000)")
    p.add_argument("--due-fraction", type=float, default=0.10, help="share of N due (0.10)")
    p.add_argument("--latencies", type=float, nargs="+", help="MX latencies in seconds")
    p.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 2,
        help="prefork concurrency of both workers (default: cores)",
    )
    p.add_argument("--batch-size", type=int, default=200, help="REAUTH_BATCH_SIZE (200)")
    p.add_argument(
        "--mx-concurrency",
        type=int,
        default=200,
        help="REAUTH_MX_MAX_CONCURRENCY of the main runs (200: a batch in one wave)",
    )
    p.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        help="REAUTH_MX_MAX_CONCURRENCY values of the concurrency sweep",
    )
    p.add_argument("--naive-sample", type=int, help="members run through the naive baseline")
    p.add_argument("--users", type=int, default=100, help="distinct MX users (Nexus sessions)")
    p.add_argument("--rss-due", type=int, help="due members of the large RSS run (100,000)")
    p.add_argument("--due-total", type=int, help="members of the due-query table (1,000,000)")
    p.add_argument("--out", type=Path, default=HERE, help="where results.* and RESULTS.md go")
    p.add_argument("--keep-db", action="store_true", help="do not drop reauth_bench at the end")
    args = p.parse_args(argv)
    q = args.quick
    args.members = args.members or (50_000 if q else 200_000)
    args.latencies = args.latencies or [0.0, 0.1] if q else args.latencies or [0.0, 0.05, 0.1]
    args.sweep = args.sweep if args.sweep is not None else ([32] if q else [32, 64, 100, 200])
    args.naive_sample = args.naive_sample or (200 if q else 1000)
    args.rss_due = args.rss_due or (15_000 if q else 100_000)
    args.due_total = args.due_total or (200_000 if q else 1_000_000)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from bench import serve

        serve.main(argv[1:])
        return
    if argv[:1] == ["webhooks"]:
        from bench import webhooks

        webhooks.main(argv[1:])
        return
    if argv[:1] == ["funnel"]:
        from bench import funnel

        funnel.main(argv[1:])
        return
    if argv[:1] == ["all"]:
        run_all(argv[1:])
        return
    args = parse(argv)
    started = time.perf_counter()
    due = int(args.members * args.due_fraction)
    sweep_latency = 0.1
    config = {
        "members": args.members,
        "due": due,
        "due_fraction": args.due_fraction,
        "latencies": args.latencies,
        "processes": args.processes,
        "batch_size": args.batch_size,
        "mx_concurrency": args.mx_concurrency,
        "sweep": args.sweep,
        "naive_sample": args.naive_sample,
        "users": args.users,
        "rss_due": args.rss_due,
        "due_total": args.due_total,
        "sweep_latency": sweep_latency,
        "quick": args.quick,
    }
    rows: list[dict[str, Any]] = []
    logs = Path(tempfile.mkdtemp(prefix="reauth-bench-"))
    # Long runs must end: every wait on the stream is bounded (and reported as incomplete).
    timeout = 600.0

    def record(row: dict[str, Any], series: str) -> None:
        row["series"] = series
        rows.append(row)
        brief = {k: v for k, v in row.items() if k not in ("plan", "claim_plan")}
        print(json.dumps(brief), flush=True)

    print(f"logs in {logs}", flush=True)
    db_url = infra.fresh_database()
    infra.flush_redis()
    env = infra.environment(db_url)
    # The naive baseline caches Nexus sessions per process; few users keep session set-up
    # (two extra MX calls per user per process) a small share of its calls, as in the pipeline.
    naive_users = max(1, args.naive_sample // 100)
    try:
        with infra.sandbox_process(0.0, logs / "sandbox.log") as sb:
            common = {"processes": args.processes, "logs": logs, "timeout": timeout}
            # What every pipeline row shares; each call names what it varies.
            pipeline = functools.partial(
                runs.pipeline, db_url, sb, users=args.users, batch_size=args.batch_size, **common
            )
            for lat in args.latencies:
                p = pipeline(
                    total=args.members, due=due, latency=lat, mx_concurrency=args.mx_concurrency
                )
                record(p, "latency")
                record(
                    runs.naive(
                        db_url,
                        sb,
                        sample=args.naive_sample,
                        users=naive_users,
                        latency=lat,
                        **common,
                    ),
                    "latency",
                )
                record(
                    runs.ceiling(
                        sb,
                        latency=lat,
                        in_flight=p["in_flight"],
                        requests=max(2000, min(due, 6000)),
                    ),
                    "latency",
                )
                if lat == sweep_latency:
                    p = dict(p)
                    record(p, "rss")
            sweep_due = max(2000, due // 4)
            for conc in args.sweep:
                p = pipeline(
                    total=args.members, due=sweep_due, latency=sweep_latency, mx_concurrency=conc
                )
                record(p, "concurrency")
                record(
                    runs.ceiling(
                        sb,
                        latency=sweep_latency,
                        in_flight=p["in_flight"],
                        requests=max(1000, min(sweep_due, 4000)),
                    ),
                    "concurrency",
                )
            # The MX side (issue 17): the Platform API (one call per member, Basic auth) and
            # Nexus with 1-2 due members per user (a new session, so up to three MX calls, for
            # most members), each against a raw ceiling measured right after it.
            for api, due_users in (("platform", None), ("nexus", max(1, due * 2 // 3))):
                p = pipeline(
                    total=args.members,
                    due=due,
                    latency=sweep_latency,
                    mx_concurrency=args.mx_concurrency,
                    api=api,
                    due_users=due_users,
                )
                record(p, "mx")
                record(
                    runs.ceiling(
                        sb,
                        latency=sweep_latency,
                        in_flight=p["in_flight"],
                        requests=max(2000, min(due, 6000)),
                        api=api,
                    ),
                    "mx",
                )
            naive_procs = (
                [args.processes * 4] if args.quick else [args.processes * 2, args.processes * 4]
            )
            for procs in naive_procs:
                record(
                    runs.naive(
                        db_url,
                        sb,
                        sample=max(100, args.naive_sample // 3),
                        users=naive_users,
                        latency=sweep_latency,
                        processes=procs,
                        logs=logs,
                        timeout=timeout,
                    ),
                    "concurrency",
                )
            if sweep_latency not in args.latencies:
                raise SystemExit("--latencies must include 0.1 (the RSS and sweep latency)")
            record(
                pipeline(
                    total=max(args.members, args.rss_due),
                    due=args.rss_due,
                    latency=sweep_latency,
                    mx_concurrency=args.mx_concurrency,
                ),
                "rss",
            )
        record(runs.due_query(db_url, total=args.due_total, due=args.due_total // 100), "due")
    finally:
        if not args.keep_db:
            infra.drop_database()
        infra.flush_redis()
    results = {
        "command": "uv run python -m bench" + (" " + shlex.join(argv or sys.argv[1:])).rstrip(),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - started, 1),
        "config": config,
        "environment": env,
        "rows": rows,
        "notes": NOTES,
    }
    results["targets"] = report.targets(results)
    write(results, args.out)


def run_all(argv: list[str]) -> None:
    """Every benchmark in one sitting, in the order of the page: pipeline, serve, webhooks,
    funnel, all written to the same ``--out``; ``results["all"]`` records the sitting so the
    page can say every table on it comes from one run. ``--quick`` is passed to the runs
    that have a quick form (the pipeline and serve)."""
    p = argparse.ArgumentParser(prog="python -m bench all", description=run_all.__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes for every run")
    p.add_argument("--out", type=Path, default=HERE, help="where results.* and RESULTS.md go")
    args = p.parse_args(argv)
    from bench import funnel, serve, webhooks

    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.perf_counter()
    quick = ["--quick"] if args.quick else []
    # Passed on only when not the default, so the commands the page shows hold no local path.
    out = ["--out", str(args.out)] if args.out.resolve() != HERE else []
    # The pipeline's write() keeps older serve/webhooks/funnel figures; each later step
    # replaces its own, so a step that fails leaves its section visibly older than "all".
    main([*quick, *out])
    serve.main([*quick, *out])
    webhooks.main([*(["--seconds", "3"] if args.quick else []), *out])
    funnel.main([*(["--episodes", "100000"] if args.quick else []), *out])
    sitting = {
        "command": "uv run python -m bench all" + (" --quick" if args.quick else ""),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    report.write_section(args.out, "all", sitting)
    print(f"one run: {sitting['started_at']} to {sitting['finished_at']}")


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "results.json"
    if previous.exists():
        # The serve, webhooks and funnel runs (python -m bench serve|webhooks|funnel) are run
        # on their own: keep their figures.
        kept = json.loads(previous.read_text())
        for key in ("serve", "webhooks", "funnel", "all"):
            if kept.get(key) and key not in results:
                results[key] = kept[key]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plot(results, out / "results.png")
    page = out / "RESULTS.md"
    # Hand-written findings (between report.KEEP_BEGIN/KEEP_END) survive a new run.
    kept = report.kept_sections(page.read_text()) if page.exists() else ""
    page.write_text(report.markdown(results, kept))
    for t in results["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']} ({t['goal']})")
    print(f"wrote {out / 'results.json'}, {out / 'RESULTS.md'}, {out / 'results.png'}")


if __name__ == "__main__":
    main()
