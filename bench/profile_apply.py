"""Profile the webhook apply step (``apply_batch``) in one process, as an events worker runs it.

    uv run python -m bench.profile_apply --events 2000 --batch-size 200

Seeds the benchmark database with CONNECTED members, starts the sandbox in its own process
(its members answer DENIED, so every event makes its member due), stores one CONNECTION_STATUS
webhook per member through the intake, then runs the real
``worker.service.webhooks.apply_batch`` batch by batch with the worker's settings. The hand-on
to a regenerate batch is the real claim (``webhooks.claim_due``) without queueing a task.
Prints, and writes ``bench/profiles/apply-<latency>-cpu.txt``:

* ``unprofiled``: events/s in one process and **CPU ms per event** (``time.process_time``);
* a cProfile on the CPU clock: CPU µs per event by stage, and the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import sys
import time
from pathlib import Path

from bench import infra
from bench.profile_batch import cpu_report, worker_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--mx-concurrency", type=int, default=200)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--log-level", default="WARNING", help="REAUTH_LOG_LEVEL (WARNING)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    out = Path(__file__).resolve().parent / "profiles"
    logs = Path("/tmp/reauth-bench-logs")
    logs.mkdir(exist_ok=True)
    url = infra.fresh_database()
    infra.flush_redis()
    from worker.clock import utc_now

    infra.seed_members(url, total=args.events, due=0, now=utc_now(), users=args.users)
    with infra.sandbox_process(args.latency, logs / "profile-apply-sandbox.log") as sb:
        sb.configure(latency=args.latency, default_connection_status="DENIED")
        rt = worker_runtime(url, sb, args)
        from sqlalchemy import text

        from worker.service import webhooks

        with rt.engine.connect() as conn:
            rows = conn.execute(text("SELECT member_guid, user_guid FROM members ORDER BY id"))
            bodies = [
                json.dumps({
                    "action": "CHANGED", "connection_status": "DENIED",
                    "connection_status_id": 2, "member_guid": g, "type": "CONNECTION_STATUS",
                    "user_guid": u,
                }).encode()
                for g, u in rows
            ]  # fmt: skip
        for i in range(0, len(bodies), 200):
            webhooks.intake_many(rt, [(b, None) for b in bodies[i : i + 200]], utc_now())

        def hand_on(ids: list[int]) -> None:
            webhooks.claim_due(rt, ids, utc_now())

        def batch() -> int:
            return webhooks.apply_batch(rt, clock=utc_now, hand_on=hand_on).events

        batch()  # warm-up: pools, Nexus sessions, imports
        batches = (args.events // args.batch_size) - 1
        half = batches // 2
        started, cpu = time.perf_counter(), time.process_time()
        events = sum(batch() for _ in range(half))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        line = (
            f"unprofiled: {events} events in {elapsed:.2f}s: {events / elapsed:.0f}/s in one "
            f"process, {cpu / events * 1000:.2f} ms CPU per event"
        )
        print(line)
        cp = cProfile.Profile(time.process_time)
        cp.enable()
        n = sum(batch() for _ in range(batches - half))
        cp.disable()
        report = cpu_report(
            cp,
            n,
            f"cProfile on the CPU clock, {n} events (batch {args.batch_size}), MX latency "
            f"{args.latency}s, log level {args.log_level}; {line}",
            unit="event",
        )
        if not args.no_write:
            (out / f"apply-{args.latency}-cpu.txt").write_text(report)
        sys.stdout.write(report[:9000])
        rt.close()
    infra.drop_database()


if __name__ == "__main__":
    main()
