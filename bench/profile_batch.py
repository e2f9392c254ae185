"""Profile ``regenerate_batch`` in one process with pyinstrument (what a pool process does).

    uv run python -m bench.profile_batch --latency 0.1 --batches 20

Seeds the benchmark database, starts the sandbox in its own process, claims ``batches`` pages
like the scan does, then runs the real ``worker.service.regenerate.regenerate_batch`` on each under
pyinstrument with the worker's settings. Writes ``bench/profiles/regenerate-<latency>.html``
and prints a text summary plus per-phase wall times.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench import infra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--mx-concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=100)
    args = parser.parse_args()

    from pyinstrument import Profiler

    out = Path(__file__).resolve().parent / "profiles"
    out.mkdir(exist_ok=True)
    logs = Path("/tmp/reauth-bench-logs")
    logs.mkdir(exist_ok=True)
    url = infra.fresh_database()
    infra.flush_redis()
    due = args.batches * args.batch_size
    from worker.clock import utc_now

    infra.seed_members(url, total=due * 10, due=due, now=utc_now(), users=args.users)
    with infra.sandbox_process(args.latency, logs / "profile-sandbox.log") as sb:
        env = infra.reauth_env(
            url,
            sb,
            REAUTH_MX_MAX_CONCURRENCY=str(args.mx_concurrency),
            REAUTH_BATCH_SIZE=str(args.batch_size),
        )
        os.environ.update({k: v for k, v in env.items() if k.startswith("REAUTH_")})
        from worker.cli.output import setup
        from worker.config import get_settings
        from worker.runtime import Runtime
        from worker.service.regenerate import regenerate_batch
        from worker.store import leases
        from worker.store import members as repo
        from worker.store.db import session_scope

        get_settings.cache_clear()
        setup()  # the worker's logging (JSON, WARNING), as in a pool process
        rt = Runtime(get_settings())
        pages = []
        after = None
        now = utc_now()
        for _ in range(args.batches):
            owner = leases.new_owner()
            with session_scope(rt.sessions) as s:
                page = repo.claim_due(
                    s,
                    now=now,
                    owner=owner,
                    lease=rt.settings.claim_lease,
                    limit=args.batch_size,
                    after=after,
                )
            pages.append((page.ids, owner))
            after = page.last
        # One warm-up batch: connection pools, sessions, imports.
        regenerate_batch(rt, *pages.pop(0), clock=utc_now)
        # First half unprofiled: wall and CPU time per member without the profiler's overhead.
        half = len(pages) // 2
        started, cpu = time.perf_counter(), time.process_time()
        for ids, owner in pages[:half]:
            regenerate_batch(rt, ids, owner, clock=utc_now)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        members = sum(len(ids) for ids, _ in pages[:half])
        print(
            f"unprofiled: {members} members in {elapsed:.2f}s: {members / elapsed:.0f}/s in one "
            f"process, {cpu / members * 1000:.2f} ms CPU per member"
        )
        import cProfile
        import pstats

        cp = cProfile.Profile()
        cp.enable()
        for ids, owner in pages[half : half + 5]:
            regenerate_batch(rt, ids, owner, clock=utc_now)
        cp.disable()
        pstats.Stats(cp).sort_stats("tottime").print_stats(25)
        profiler = Profiler(interval=0.001)
        profiler.start()
        for ids, owner in pages[half:]:
            regenerate_batch(rt, ids, owner, clock=utc_now)
        profiler.stop()
        path = out / f"regenerate-{args.latency}.html"
        path.write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:12000])
        print(f"profile: {path}")
        rt.close()
    infra.drop_database()


if __name__ == "__main__":
    main()
