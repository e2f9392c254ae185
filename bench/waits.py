"""Lock and wait times under load, measured where they happen (issue 17).

    uv run python -m bench.waits --due 3000 --users 1500 --processes 2 --latency 0.1

Runs the pipeline (``reauth.scan`` → the production profile: a prefork Celery worker with
``--processes`` pool processes beside the events worker (one process, the relay) → the MX sandbox
at ``--latency`` → outbox → relay → Redis stream) with ``REAUTH_WAITS_FILE`` set, so the workers'
processes time their waits (:mod:`worker.waits`): the FOR UPDATE SKIP LOCKED claims
(``claim:members``: scan and batches; ``claim:notifications``: the relay's lease), Nexus session
creation (``session``: a call waiting for its user's session, single-flight; ``session_lock``: a
creator waiting for another process's creation lock), the Redis rate limiter (``rate_permit``: a
call reserving its slot before the in-flight cap, ``MxClient.admit``; ``rate_limiter``: the time
inside the cap spent on the rate limit, waiting for that slot or taking a new one), the relay
task's time queued (``relay_queued``) and its passes (``relay_pass``). Prints, per kind: count,
p50, p99, max, total, and the total as a share of the run's wall time times the worker processes
(how much of the tree's time went to it; concurrent waits inside one process's event loop
overlap, so for the MX-side kinds read the per-call figures). Writes
``bench/profiles/waits-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import infra
from bench.runs import _sender, warm_up
from worker.app.celery_app import QUEUE, SCAN_TASK
from worker.clock import utc_now


def summarise(path: Path, wall: float, processes: int) -> dict[str, dict[str, float]]:
    """Per kind: n, p50/p99/max (ms), total (s) and its share of ``wall x processes``."""
    by: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        kind, _pid, seconds = line.split("\t")
        by.setdefault(kind, []).append(float(seconds))
    out: dict[str, dict[str, float]] = {}
    for kind, xs in sorted(by.items()):
        xs.sort()
        q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else xs * 99
        out[kind] = {
            "n": len(xs),
            "p50_ms": round(q[49] * 1000, 3),
            "p99_ms": round(q[98] * 1000, 3),
            "max_ms": round(xs[-1] * 1000, 3),
            "total_s": round(sum(xs), 3),
            "share": round(sum(xs) / (wall * processes), 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--due", type=int, default=3000)
    parser.add_argument("--users", type=int, default=1500, help="MX users (Nexus sessions)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--mx-concurrency", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--rate", default="100000", help="REAUTH_MX_RATE_LIMIT_PER_SECOND")
    parser.add_argument(
        "--api", default="nexus", choices=["nexus", "platform"], help="REAUTH_MX_API"
    )
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    logs = Path("/tmp/reauth-bench-logs")
    logs.mkdir(exist_ok=True)
    url = infra.fresh_database()
    infra.flush_redis()
    infra.seed_members(url, total=args.due * 3, due=args.due, now=utc_now(), users=args.users)
    label = f"{args.due}-{args.users}u-{args.processes}p-{args.latency}-rate{args.rate}"
    if args.api != "nexus":
        label += f"-{args.api}"
    with tempfile.TemporaryDirectory() as tmp:
        waits_file = Path(tmp) / "waits.tsv"
        with infra.sandbox_process(args.latency, logs / "waits-sandbox.log") as sb:
            env = infra.reauth_env(
                url,
                sb,
                REAUTH_MX_MAX_CONCURRENCY=str(args.mx_concurrency),
                REAUTH_BATCH_SIZE=str(args.batch_size),
                REAUTH_MX_RATE_LIMIT_PER_SECOND=args.rate,
                REAUTH_MX_API=args.api,
                REAUTH_WAITS_FILE=str(waits_file),
            )
            sender = _sender()
            with infra.reauth_workers(
                env, processes=args.processes, logs=logs, name=f"waits-{label}"
            ):
                warm_up(sender, args.processes)
                waits_file.unlink(missing_ok=True)  # the warm-up's passes are not the run's
                started = time.perf_counter()
                sender.send_task(SCAN_TASK, queue=QUEUE, kwargs={"trigger": "bench"})
                got, ended = infra.wait_stream(infra.STREAM, args.due, timeout=args.timeout)
                time.sleep(1)  # let the last relay pass write its timing
            sender.close()
        wall = ended - started
        # Every pool process of both workers (the events worker has one).
        pool = args.processes + 1
        kinds = summarise(waits_file, wall, pool)
    infra.drop_database()
    result: dict[str, Any] = {
        "due": args.due,
        "users": args.users,
        "delivered": got,
        "wall_s": round(wall, 3),
        "processes": args.processes,
        "latency_s": args.latency,
        "mx_concurrency": args.mx_concurrency,
        "batch_size": args.batch_size,
        "rate_limit": args.rate,
        "waits": kinds,
    }
    out = Path(__file__).resolve().parent / "profiles" / f"waits-{label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{got}/{args.due} members delivered in {wall:.2f}s; {args.processes} pool processes "
        "+ the events worker, "
        f"{args.users} MX users, {args.latency * 1000:.0f} ms MX, rate limit {args.rate}/s"
    )
    print(f"| wait | n | p50 ms | p99 ms | max ms | total s | share of {pool} x wall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, k in kinds.items():
        print(
            f"| {kind} | {k['n']:.0f} | {k['p50_ms']} | {k['p99_ms']} | {k['max_ms']} | "
            f"{k['total_s']} | {k['share']:.1%} |"
        )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
