"""Profile ``regenerate_batch`` in one process with pyinstrument (what a pool process does).

    uv run python -m bench.profile_batch --latency 0.1 --batches 20

Seeds the benchmark database, starts the sandbox in its own process, claims ``batches`` pages
like the scan does, then runs the real ``worker.service.regenerate.regenerate_batch`` on each under
pyinstrument with the worker's settings. Prints, and writes under ``bench/profiles/``:

* ``unprofiled``: members/s in one process and **CPU ms per member** (``time.process_time``),
  the figure to compare between changes (it hardly depends on what else the machine runs);
* ``regenerate-<latency>-<level>-cpu.txt``: a cProfile on the *CPU* clock, as a table of CPU
  per member by library/stage (MX client, httpx, aiohttp, the event loop, SQLAlchemy,
  psycopg, Redis, logging) and the top functions;
* ``regenerate-<latency>-<level>.txt`` / ``.html``: the pyinstrument tree (wall clock: the
  event loop's ``[self]`` there is mostly waiting for MX).

``--log-level INFO`` runs with production's level (the worker's default); WARNING is the
benchmark's setting.
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import time
from pathlib import Path
from typing import Any

from bench import infra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--mx-concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--log-level", default="WARNING", help="REAUTH_LOG_LEVEL (WARNING)")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's collector settings (a pool process runs worker.runtime.tune_gc)",
    )
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
        rt = worker_runtime(url, sb, args, tune=not args.default_gc)
        from worker.service.regenerate import regenerate_batch
        from worker.store import leases
        from worker.store import members as repo
        from worker.store.db import session_scope

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
        # One warm-up batch (connection pools, sessions, imports), its SQL statements counted
        # as the server sees them: an executemany is one statement per parameter set.
        from collections import Counter

        from sqlalchemy import Engine, event

        sent: Counter[str] = Counter()

        def count(*a: Any) -> None:
            # insertmanyvalues also says executemany, but binds one flat multi-row statement.
            params, many = a[3], a[5]
            rows = many and isinstance(params, list) and isinstance(params[0], (dict, tuple))
            sent[" ".join(str(a[2]).split()[:3]).upper()] += len(params) if rows else 1

        event.listen(Engine, "before_cursor_execute", count)
        warm = pages.pop(0)
        regenerate_batch(rt, *warm, clock=utc_now)
        event.remove(Engine, "before_cursor_execute", count)
        print(
            f"SQL statements in one batch of {len(warm[0])}: {sum(sent.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sent.most_common())})"
        )
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
        import sys

        tag = f"{args.latency}-{args.log_level.lower()}"
        # On the CPU clock: the time the event loop spends waiting for MX is not counted.
        cp = cProfile.Profile(time.process_time)
        cp.enable()
        profiled = pages[half : half + 5]
        for ids, owner in profiled:
            regenerate_batch(rt, ids, owner, clock=utc_now)
        cp.disable()
        n = sum(len(ids) for ids, _ in profiled)
        report = cpu_report(
            cp,
            n,
            f"cProfile on the CPU clock, {n} members, MX latency {args.latency}s, log level "
            f"{args.log_level}; unprofiled: {cpu / members * 1000:.2f} ms CPU per member",
        )
        (out / f"regenerate-{tag}-cpu.txt").write_text(report)
        sys.stdout.write(report[:6000])
        profiler = Profiler(interval=0.001)
        profiler.start()
        for ids, owner in pages[half:]:
            regenerate_batch(rt, ids, owner, clock=utc_now)
        profiler.stop()
        path = out / f"regenerate-{tag}.html"
        path.write_text(profiler.output_html())
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        (out / f"regenerate-{tag}.txt").write_text(text)
        print(text[:12000])
        print(f"profiles: {out}/regenerate-{tag}*")
        rt.close()
    infra.drop_database()


#: Stages of a member's CPU, by where the code lives (first match wins), for stage_table.
STAGES = (
    ("MX client (worker/mx)", ("worker/mx/",)),
    ("httpx", ("/httpx/", "/httpx_aiohttp/")),
    ("aiohttp + yarl + multidict", ("/aiohttp/", "/yarl/", "/multidict/", "/aiohappyeyeballs/")),
    ("Redis client (rate limiter, sessions)", ("/redis/",)),
    ("SQLAlchemy", ("/sqlalchemy/",)),
    ("psycopg", ("/psycopg/",)),
    ("logging (structlog + stdlib)", ("/structlog/", "logging/__init__", "worker/logging.py")),
    ("event loop (asyncio/uvloop)", ("asyncio/", "/uvloop/", "uvloop.")),
    ("service + store + core (worker/)", ("worker/", "models/")),
)


def worker_runtime(
    url: str, sandbox: infra.Sandbox, args: argparse.Namespace, *, tune: bool = True
) -> Any:
    """A worker's runtime in this process, as in a pool process: its REAUTH_ environment (the
    sandbox, ``args``' batch size, in-flight cap and log level), the collector settings the
    Celery parent sets before forking (``tune``) and the worker's logging."""
    env = infra.reauth_env(
        url,
        sandbox,
        REAUTH_MX_MAX_CONCURRENCY=str(args.mx_concurrency),
        REAUTH_BATCH_SIZE=str(args.batch_size),
        REAUTH_LOG_LEVEL=args.log_level.upper(),
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("REAUTH_")})
    from worker.cli.output import setup
    from worker.config import get_settings
    from worker.runtime import Runtime, tune_gc

    get_settings.cache_clear()
    if tune:
        tune_gc()  # as the Celery parent does before forking its pool (worker_init)
    setup()  # the worker's logging (JSON, --log-level), as in a pool process
    return Runtime(get_settings())


def cpu_report(profile: Any, n: int, header: str, *, unit: str = "member") -> str:
    """A CPU-clock cProfile as text: ``header``, CPU per ``unit`` by stage, the top functions
    by own and by cumulative time."""
    buf = io.StringIO()
    buf.write(f"{header}\n\n{stage_table(pstats.Stats(profile), n, unit=unit)}\n")
    stats = pstats.Stats(profile, stream=buf)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    return buf.getvalue()


def stage_table(stats: pstats.Stats, n: int, *, unit: str = "member") -> str:
    """CPU µs per ``unit`` by stage: the profile's own (tottime) CPU summed by file."""
    totals: dict[str, float] = {name: 0.0 for name, _ in STAGES}
    totals["other (C builtins: sockets, json, ...)"] = 0.0
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        # C functions have filename "~" and say whose they are in their name (uvloop.loop...).
        where = f"{filename}:{func}"
        for name, needles in STAGES:
            if any(needle in where for needle in needles):
                totals[name] += tt
                break
        else:
            totals["other (C builtins: sockets, json, ...)"] += tt
    whole = sum(totals.values()) or 1.0
    lines = [f"| stage | CPU us/{unit} | share |", "|---|---:|---:|"]
    for name, tt in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {tt / n * 1e6:.0f} | {tt / whole:.0%} |")
    lines.append(f"| **total (profiled)** | {whole / n * 1e6:.0f} | 100% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
