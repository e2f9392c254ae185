"""``uv run python -m bench webhooks``: MX webhook intake and webhook-to-stream latency.

Needs the local PostgreSQL and Redis like the other runs (a database ``reauth_bench_webhooks``
is dropped, recreated and dropped again; the benchmark's Redis db, 13 unless
REAUTH_BENCH_REDIS_URL says otherwise, is flushed). Every server and load generator is its own
process on 127.0.0.1:

* the MX sandbox (``reauth sandbox``);
* ``reauth serve`` (``python -m worker serve``, uvicorn with uvloop and httptools) with
  REAUTH_MX_WEBHOOK_USERNAME/PASSWORD set, the Redis broker, PostgreSQL, Celery follow-ups (the
  intake queues ``reauth.apply_webhooks`` through the coalescing Redis flag, as in production);
  ``--serve-workers 1 2`` runs the intake series with one, then two of them on one port
  (``--reuse-port``: SO_REUSEPORT, the kernel spreads connections);
* the baseline: bench/hello.py's trivial Starlette app, same uvicorn configuration;
* the load generators: Debian's ``wrk`` (C, closed loop: N connections each sending its next
  request when the previous is answered) with bench/webhooks.lua (a distinct body per request);
  and bench/loadgen.py (aiohttp, open loop) for the latency run.

What one run measures:

1. **ingestion** — wrk against the baseline's ``GET /``, then ``POST /mx/webhooks`` at each
   connection count: answered/s, p50/p99, non-204 answers; then the inbox is counted (every
   204 must be a stored row).
2. **webhook → stream** — M members seeded CONNECTED (known to the service), the sandbox
   answering DENIED for them, their MX users' sessions already made (as in a running
   service); the production profile of workers: the main Celery worker (prefork, ``-c`` cores,
   every queue) runs the regenerate batches, and the events worker (``-Q reauth.events -c 1``)
   the apply task and the relay; M CONNECTION_STATUS webhooks are posted in an
   open loop at ``--e2e-rate``; each notification's arrival is the millisecond timestamp of its
   Redis stream entry id, its start the moment its webhook was due to be sent.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import infra, report, report_webhooks, runs
from bench.serve import SECRET, cpu_per_request, cpu_snapshot, load, server
from worker.app.celery_app import APPLY_WEBHOOKS_TASK, DELIVER_TASK

HERE = Path(__file__).resolve().parent
DB_NAME = "reauth_bench_webhooks"
USER, PASSWORD = "mx-bench", "bench-webhook-password-0123456789"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
WRK = shutil.which("wrk") or "/usr/bin/wrk"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench webhooks", description=__doc__.splitlines()[0]
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of each wrk run (10)")
    p.add_argument(
        "--connections", type=int, nargs="+", default=[8, 16, 32], help="wrk connections"
    )
    p.add_argument(
        "--serve-workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="reauth serve processes, one intake series each (1 2); the latency run uses the last",
    )
    p.add_argument(
        "--open-rate", type=float, default=1000.0,
        help="offered rate of the open-loop intake row, per serve series (1000; 0: none)",
    )  # fmt: skip
    p.add_argument("--events", type=int, default=1000, help="webhooks of the latency run")
    p.add_argument("--e2e-rate", type=float, default=1000.0, help="their rate per second")
    p.add_argument("--latency", type=float, default=0.05, help="sandbox latency (0.05 s)")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="Celery -c")
    # The production profile of docs/SCALING.md, as the pipeline runs use.
    p.add_argument("--batch-size", type=int, default=200, help="REAUTH_BATCH_SIZE (200)")
    p.add_argument(
        "--mx-concurrency", type=int, default=200, help="REAUTH_MX_MAX_CONCURRENCY (200)"
    )
    p.add_argument(
        "--main-queue", default="reauth,reauth.events",
        help="-Q of the main worker in the latency run (default: batches first, then events, "
        "beside the events worker: the two-worker profile of docs/SCALING.md)",
    )  # fmt: skip
    p.add_argument("--skip-e2e", action="store_true", help="ingestion only")
    p.add_argument("--skip-ingest", action="store_true", help="the latency run only")
    p.add_argument(
        "--keep-db", action="store_true",
        help=f"leave the database ({DB_NAME}) for inspection; the next run drops it",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=HERE, help="where results.json and RESULTS.md are")
    args = p.parse_args(argv)
    return args


# --- processes ------------------------------------------------------------------------------------


def serve_env(db_url: str, sb: infra.Sandbox, port: int, **extra: str) -> dict[str, str]:
    return infra.reauth_env(
        db_url,
        sb,
        REAUTH_PUBLIC_URL=f"http://127.0.0.1:{port}",
        REAUTH_RECONNECT_SECRETS=SECRET,
        REAUTH_MX_WEBHOOK_USERNAME=USER,
        REAUTH_MX_WEBHOOK_PASSWORD=PASSWORD,
        **extra,
    )


@contextlib.contextmanager
def serve_processes(
    env: dict[str, str], port: int, workers: int, logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``workers`` `reauth serve` processes on one port (``--reuse-port``)."""
    args = ["-m", "worker", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        args.append("--reuse-port")
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                server(args, env, f"http://127.0.0.1:{port}/healthz", logs / f"serve-{i}.log")
            )
            for i in range(workers)
        ]
        yield procs


def wrk(
    url: str, *, connections: int, seconds: float, prefix: str, threads: int = 2
) -> dict[str, Any]:
    """One wrk run of bench/webhooks.lua; returns its JSON line plus answered/s."""
    script = HERE / "webhooks.lua"
    cmd = [
        WRK, "-t", str(min(threads, connections)), "-c", str(connections),
        "-d", f"{round(seconds)}s", "--timeout", "10s", "-s", str(script), url, "--", AUTH, prefix,
    ]  # fmt: skip
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_JSON "))
    res: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    res["wall_s"] = round(time.perf_counter() - started, 2)
    res["per_s"] = round(res["requests"] / (res["duration_us"] / 1e6), 1)
    for k in ("p50", "p90", "p99", "max"):
        res[f"{k}_ms"] = round(res.pop(f"{k}_us") / 1000, 2)
    res["mean_ms"] = round(res.pop("mean_us") / 1000, 2)
    return res


def wrk_get(url: str, *, connections: int, seconds: float) -> dict[str, Any]:
    """wrk's plain GET (the baseline page), parsed from its text report."""
    out = subprocess.run(
        [WRK, "-t", "2", "-c", str(connections), "-d", f"{round(seconds)}s", "--latency", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(q: str) -> float:
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        assert m is not None, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return round(float(m.group(1)) * scale, 2)

    return {"per_s": rate, "p50_ms": pct("50"), "p99_ms": pct("99")}


def _cpu_tree(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(p.pid).cpu_times()
            total += t.user + t.system
    return total


def inbox_counts(db_url: str) -> dict[str, int]:
    return {
        str(k): int(v)
        for k, v in _rows(db_url, "SELECT status, count(*) FROM webhook_events GROUP BY status")
    }


def _rows(db_url: str, sql: str) -> list[Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


# --- the runs -------------------------------------------------------------------------------------


def ingestion(
    db_url: str, sb: infra.Sandbox, args: argparse.Namespace, logs: Path
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    hello_port = infra.free_port()
    hello_env = dict(os.environ, PYTHONPATH=str(infra.ROOT))
    hello_url = f"http://127.0.0.1:{hello_port}/"
    with server(["-m", "bench.hello", str(hello_port)], hello_env, hello_url, logs / "hello.log"):
        base = wrk_get(hello_url, connections=16, seconds=args.seconds)
    rows.append({"kind": "ingest_baseline", "connections": 16, **base})
    print(json.dumps(rows[-1]), flush=True)
    for workers in args.serve_workers:
        rows += _ingest_series(db_url, sb, args, logs, workers=workers, base=base)
    return rows


def _ingest_series(
    db_url: str,
    sb: infra.Sandbox,
    args: argparse.Namespace,
    logs: Path,
    *,
    workers: int,
    base: dict[str, Any],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    port = infra.free_port()
    env = serve_env(db_url, sb, port)
    with serve_processes(env, port, workers, logs) as procs:
        url = f"http://127.0.0.1:{port}/mx/webhooks"
        # Warm-up: connections, pools, the first commits.
        wrk(url, connections=8, seconds=2, prefix=f"MBR-warm{workers}")
        for conns in args.connections:
            stored0 = sum(inbox_counts(db_url).values())
            cpu0 = cpu_snapshot(procs[0], sb)
            serve0 = _cpu_tree(procs)
            prefix = f"MBR-w{workers}c{conns}"
            res = wrk(url, connections=conns, seconds=args.seconds, prefix=prefix)
            cpu1 = cpu_snapshot(procs[0], sb)
            serve1 = _cpu_tree(procs)
            stored = sum(inbox_counts(db_url).values()) - stored0
            answered = res["requests"]
            cpu = cpu_per_request(cpu0, cpu1, 0.0, answered)
            cpu["server"] = round((serve1 - serve0) * 1000 / max(1, answered), 3)
            row = {
                "kind": "ingest",
                "connections": conns,
                "serve_workers": workers,
                **res,
                "stored": stored,
                "vs_baseline": round(res["per_s"] / base["per_s"], 4),
                "cpu_ms": cpu,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.open_rate:
            rows.append(_ingest_open(db_url, sb, args, procs, url, workers=workers))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _ingest_open(
    db_url: str,
    sb: infra.Sandbox,
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
    url: str,
    *,
    workers: int,
) -> dict[str, Any]:
    """The intake at a fixed offered rate (bench/loadgen.py, open loop): each request's latency
    runs from the moment it was due, so a slow answer cannot hold back the next request (a
    closed loop's queueing is not in it) and p99 is the p99 at the target rate."""
    n = round(args.open_rate * args.seconds)
    bodies = [
        json.dumps({
            "action": "CHANGED", "connection_status": "DENIED", "connection_status_id": 2,
            "connection_status_message": "bench", "member_guid": f"MBR-open{workers}-{i:08d}",
            "type": "CONNECTION_STATUS", "user_guid": "USR-bench",
        })
        for i in range(n)
    ]  # fmt: skip
    stored0 = sum(inbox_counts(db_url).values())
    cpu0 = cpu_snapshot(procs[0], sb)
    serve0 = _cpu_tree(procs)
    res = load(
        {
            "mode": "open", "urls": [url] * n, "rate": args.open_rate, "method": "POST",
            "bodies": bodies,
            "headers": {"Authorization": AUTH, "Content-Type": "application/json"},
        },
        timeout=args.seconds + 120,
    )  # fmt: skip
    cpu1 = cpu_snapshot(procs[0], sb)
    serve1 = _cpu_tree(procs)
    answered = res["statuses"].get("204", 0)
    cpu = cpu_per_request(cpu0, cpu1, 0.0, answered)
    cpu["server"] = round((serve1 - serve0) * 1000 / max(1, answered), 3)
    ms = [r["ms"] for r in res["results"]]
    lag = [r["lag_ms"] for r in res["results"]]
    return {
        "kind": "ingest_open",
        "serve_workers": workers,
        "rate": args.open_rate,
        "requests": n,
        "statuses": res["statuses"],
        "per_s": round(answered / res["seconds"], 1) if res["seconds"] else None,
        "p50_ms": report.percentile(ms, 50),
        "p90_ms": report.percentile(ms, 90),
        "p99_ms": report.percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
        # The client's own lateness in sending (its loop busy): large, and the figures above
        # measure the load generator as much as the server.
        "client_lag_p99_ms": report.percentile(lag, 99),
        "stored": sum(inbox_counts(db_url).values()) - stored0,
        "cpu_ms": cpu,
    }


def e2e(db_url: str, sb: infra.Sandbox, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """M CONNECTION_STATUS webhooks in an open loop; each one's notification on the stream."""
    from bench.serve import _now

    infra.reset_tables(db_url)
    infra.flush_redis()
    n = args.events
    # Known members, CONNECTED; the sandbox (no member file) answers its default, DENIED.
    infra.seed_members(db_url, total=n, due=0, now=_now(), users=100, prefix="MBR-E2E")
    sb.configure(latency=args.latency, default_connection_status="DENIED")
    guids = [g for (g,) in _rows(db_url, "SELECT member_guid FROM members ORDER BY id")]
    users = dict(_rows(db_url, "SELECT member_guid, user_guid FROM members"))
    port = infra.free_port()
    env = serve_env(
        db_url, sb, port, REAUTH_BATCH_SIZE=str(args.batch_size),
        REAUTH_MX_MAX_CONCURRENCY=str(args.mx_concurrency),
    )  # fmt: skip
    warm_sessions(env, users)
    bodies = [
        json.dumps({
            "action": "CHANGED", "connection_status": "DENIED", "connection_status_id": 2,
            "connection_status_message": "bench", "member_guid": g, "type": "CONNECTION_STATUS",
            "user_guid": users[g],
        })
        for g in guids
    ]  # fmt: skip
    with (
        serve_processes(env, port, args.serve_workers[-1], logs),
        infra.reauth_workers(
            env, processes=args.processes, logs=logs, name="bench-webhooks",
            main_queue=args.main_queue,
        ) as workers,
    ):  # fmt: skip
        # Every pool process runs a relay and an apply pass first (nothing pending), so imports,
        # engines and first-use costs are not timed, as in a service that has been running.
        warm = runs.sender()
        runs.warm_up(warm, args.processes, tasks=(DELIVER_TASK, APPLY_WEBHOOKS_TASK))
        warm.close()
        time.sleep(1.0)
        with infra.PeakRss(*(w.pid for w in workers)) as rss:
            t0 = time.perf_counter()
            res = load(
                {
                    "mode": "open", "urls": [f"http://127.0.0.1:{port}/mx/webhooks"] * n,
                    "rate": args.e2e_rate, "method": "POST", "bodies": bodies,
                    "headers": {"Authorization": AUTH, "Content-Type": "application/json"},
                },
                timeout=120,
            )  # fmt: skip
            got, _ = infra.wait_stream(infra.STREAM, n, timeout=120)
            all_done = time.perf_counter() - t0
    # Stream ids are "<ms>-<seq>": the ms is when Redis appended the message.
    r = infra.redis_client()
    try:
        arrivals: dict[str, float] = {}
        for sid, fields in r.xrange(infra.STREAM):
            payload = json.loads(fields[b"payload"])
            arrivals.setdefault(payload["member_guid"], int(sid.split(b"-")[0]) / 1000)
    finally:
        r.close()
    # Request i was due at the loadgen's start (wall clock, same machine) + i / rate.
    start_wall = res["start_epoch"]
    lat = []
    for i, g in enumerate(guids):
        if g in arrivals:
            lat.append((arrivals[g] - (start_wall + i / args.e2e_rate)) * 1000)
    statuses = res["statuses"]
    phases = _phases(db_url, res["start_epoch"], args.e2e_rate, guids)
    row = {
        "kind": "e2e",
        "events": n,
        "rate": args.e2e_rate,
        "latency_s": args.latency,
        "processes": args.processes,
        "batch_size": args.batch_size,
        "mx_concurrency": args.mx_concurrency,
        "serve_workers": args.serve_workers[-1],
        "main_queue": args.main_queue,
        "statuses": statuses,
        "notified": len(lat),
        "stream_len": got,
        "p50_ms": report.percentile(lat, 50),
        "p90_ms": report.percentile(lat, 90),
        "p99_ms": report.percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
        "all_s": round(all_done, 2),
        "inbox": inbox_counts(db_url),
        "phases_p50_ms": phases,
        # Both workers' trees (main and events, pool children included), the run only.
        "worker_cpu_ms_per_event": round(rss.cpu_s * 1000 / got, 3) if got else None,
        "worker_peak_pss_mb": rss.peak_pss_mb,
    }
    print(json.dumps(row), flush=True)
    return row


def warm_sessions(env: dict[str, str], users: dict[str, str]) -> None:
    """Read one member per MX user once, so their Nexus sessions are in Redis, as they are in
    a service that has been running (a session lives 30 minutes); the measured run then
    does not pay 100 session set-ups in its first batch."""
    from bench.serve import settings_of
    from worker.mx import MemberRequest
    from worker.runtime import Runtime

    one_each = {u: g for g, u in users.items()}
    rt = Runtime(settings_of(env))
    try:

        async def read_all() -> None:
            import asyncio

            await asyncio.gather(
                *(rt.mx.read_member(MemberRequest(g, u)) for u, g in one_each.items())
            )

        rt.run(read_all())
    finally:
        rt.close()


def _phases(db_url: str, start: float, rate: float, guids: list[str]) -> dict[str, float | None]:
    """Where the time goes: p50 over events of each step's time from the webhook's due time
    (stored, applied, URI attempt recorded, outbox row written, delivered)."""
    due = {g: start + i / rate for i, g in enumerate(guids)}
    rows = _rows(
        db_url,
        "SELECT w.member_guid, extract(epoch FROM w.received_at), extract(epoch FROM w.applied_at),"
        " (SELECT extract(epoch FROM min(a.created_at)) FROM attempts a WHERE a.member_id = m.id),"
        " extract(epoch FROM n.created_at), extract(epoch FROM n.sent_at)"
        " FROM webhook_events w JOIN members m ON m.member_guid = w.member_guid"
        " LEFT JOIN notifications n ON n.member_id = m.id",
    )
    names = ("stored", "applied", "uri_attempt", "outbox", "sent")
    out: dict[str, float | None] = {}
    for k, name in enumerate(names, start=1):
        values = [(float(r[k]) - due[r[0]]) * 1000 for r in rows if r[k] is not None]
        p50 = report.percentile(values, 50)
        out[name] = None if p50 is None else round(p50, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from worker.logging import configure_logging

    configure_logging(fmt="console", level="WARNING")  # the session warm-up's reads
    started = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="reauth-bench-webhooks-"))
    print(f"logs in {logs}", flush=True)
    db_url = infra.fresh_database(DB_NAME)
    infra.flush_redis()
    env_info = infra.environment(db_url, packages=("uvicorn", "starlette", "uvloop", "httptools"))
    env_info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    version = subprocess.run([WRK, "-v"], capture_output=True, text=True, check=False).stdout
    env_info["wrk"] = version.split("\n")[0]
    rows: list[dict[str, Any]] = []
    try:
        with infra.sandbox_process(0.0, logs / "sandbox.log") as sb:
            if not args.skip_ingest:
                rows += ingestion(db_url, sb, args, logs)
            if not args.skip_e2e:
                rows.append(e2e(db_url, sb, args, logs))
    finally:
        if not args.keep_db:
            infra.drop_database(DB_NAME)
        infra.flush_redis()
    env_info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    run = {
        "command": "uv run python -m bench webhooks" + (" " + shlex.join(argv or [])).rstrip(),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - started, 1),
        "config": {
            "seconds": args.seconds,
            "connections": args.connections,
            "serve_workers": args.serve_workers,
            "events": args.events,
            "e2e_rate": args.e2e_rate,
            "latency_s": args.latency,
            "processes": args.processes,
            "batch_size": args.batch_size,
            "mx_concurrency": args.mx_concurrency,
        },
        "environment": env_info,
        "rows": rows,
    }
    run["targets"] = report_webhooks.webhook_targets(run)
    write(run, args.out)


def write(run: dict[str, Any], out: Path) -> None:
    """Put the run under ``webhooks`` in results.json (other runs kept), rewrite RESULTS.md."""
    report.write_and_tell(out, "webhooks", run, run["targets"])


if __name__ == "__main__":
    main()
