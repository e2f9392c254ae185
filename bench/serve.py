"""``uv run python -m bench serve``: `reauth serve` under load, with a baseline in the same run.

Needs the local PostgreSQL and Redis like the other runs (a database ``reauth_bench`` is
dropped, recreated and dropped again; Redis db 13 is flushed). Every server and the load
generator are separate processes on 127.0.0.1:

* the MX sandbox (``reauth sandbox``; latency set per run through its admin endpoint);
* ``reauth serve`` (``python -m worker serve``) with REAUTH_* pointing at PostgreSQL, Redis
  and the sandbox, on uvicorn with uvloop and httptools;
* the baseline: a trivial Starlette page (bench/hello.py) on the same uvicorn configuration;
* the load generators: Debian's ``wrk`` (C) for the GET runs when installed (``--client``;
  bench/serve_get.lua), bench/loadgen.py (aiohttp on uvloop, fed a JSON job on stdin, writing
  its result to a file) for the POST runs and for GET without wrk. wrk costs ~0.02 ms of CPU
  per request on the cores the server shares, aiohttp ~0.2 ms.

What one run measures:

1. **link mode** — a small population scanned inline twice, ``REAUTH_LINK_MODE=both`` then
   ``reconnect``: MX calls at scan time per member (the sandbox's own count of minted URIs) and
   what the messages carry.
2. **seeding** — N expired members scanned inline with ``REAUTH_LINK_MODE=reconnect`` (no MX
   call), so every one has a notification whose ``reconnect_url`` the load generator uses.
3. **GET** — keep-alive, fixed concurrency, ~10 s each: the baseline page, ``/healthz`` and
   the reconnect page (``GET /r/{token}``, cycling through every link: one DB read each).
4. **POST** — an open loop at 200 presses/s for ~10 s, each on a different member's link,
   the sandbox at 100 ms: ``POST /r/{token}`` → click limit, MX call, click + attempt rows,
   303. The service's own time is each request's total minus the MX call's time as the server
   recorded it (the click's attempt row, ``latency_ms``); total minus the configured sandbox
   latency is shown too.

Results go into the ``serve`` key of bench/results.json (the other runs' rows are kept) and a
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from bench import infra, report

HERE = Path(__file__).resolve().parent
#: Debian's wrk (C): the GET runs' load generator when installed (`--client`).
WRK = shutil.which("wrk")
#: A reconnect key for the run (not a secret: the database is thrown away).
SECRET = "bench-reconnect-key-" + "0" * 24


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 s runs instead of 10 s")
    p.add_argument("--seconds", type=float, help="length of each measured run (10; quick 3)")
    p.add_argument("--concurrency", type=int, default=32, help="GET connections (32)")
    p.add_argument(
        "--client",
        choices=["wrk", "aiohttp"],
        default="wrk" if WRK else "aiohttp",
        help="load generator of the GET runs: wrk (C, ~0.02 ms of CPU per request; the default "
        "when installed) or bench/loadgen.py (aiohttp, ~0.2 ms)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="`reauth serve --workers N` processes (1)"
    )
    p.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[50.0, 100.0, 200.0],
        help="POST presses per second, one open-loop run each; the targets are judged at the "
        "highest (50 100 200)",
    )
    p.add_argument("--latency", type=float, default=0.1, help="sandbox latency of POST (0.1)")
    p.add_argument("--users", type=int, default=100, help="distinct MX users (100)")
    p.add_argument(
        "--link-mode-members", type=int, default=200, help="population of the link mode run"
    )
    p.add_argument("--out", type=Path, default=HERE, help="where results.json and RESULTS.md are")
    p.add_argument("--keep-db", action="store_true", help="do not drop reauth_bench at the end")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    return args


# --- settings and processes -----------------------------------------------------------------------


def serve_env(db_url: str, sb: infra.Sandbox, public_url: str, **extra: str) -> dict[str, str]:
    """The pipeline's environment plus what `reauth serve` needs."""
    return infra.reauth_env(
        db_url,
        sb,
        REAUTH_PUBLIC_URL=public_url,
        REAUTH_RECONNECT_SECRETS=SECRET,
        # Every press is on a different member; raised anyway so a rerun on the same links is
        # not refused (the limit's own query runs on every press either way).
        REAUTH_RECONNECT_CLICKS_PER_HOUR="1000",
        **extra,
    )


def settings_of(env: dict[str, str]) -> Any:
    """The Settings a process started with ``env`` would load (for in-process scans)."""
    from worker.config import load_settings

    values = {
        k.removeprefix("REAUTH_").lower(): v for k, v in env.items() if k.startswith("REAUTH_")
    }
    return load_settings(**values)


def scan_inline(env: dict[str, str]) -> dict[str, Any]:
    """One scan through the job body with inline follow-ups (regenerate and deliver here)."""
    from worker.app import jobs
    from worker.clock import utc_now
    from worker.runtime import Runtime

    rt = Runtime(settings_of(env), inline=True)
    try:
        started = time.perf_counter()
        result = jobs.scan(rt, clock=utc_now, trigger="bench").as_dict()
        result["seconds"] = round(time.perf_counter() - started, 2)
        return result
    finally:
        rt.close()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer; see {log}")
        time.sleep(0.1)


@contextlib.contextmanager
def server(
    args: list[str], env: dict[str, str], ready: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=infra.ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(ready, proc, log)
        yield proc
    finally:
        infra.stop(proc)


def _cpu(p: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        t = p.cpu_times()
        return float(t.user + t.system)
    return 0.0


def _tree_cpu(p: psutil.Process) -> float:
    """CPU seconds of a process and its live children (``reauth serve --workers N``)."""
    with contextlib.suppress(psutil.Error):
        return _cpu(p) + sum(_cpu(c) for c in p.children(recursive=True))
    return 0.0


def _busy() -> float:
    """CPU seconds every process on the machine has spent (user, nice and system time; interrupt
    time is left out, as it is not charged to any process)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system)


def cpu_snapshot(server: subprocess.Popen[bytes], sandbox: infra.Sandbox) -> dict[str, float]:
    """CPU seconds used so far by the server, the sandbox, the benchmark database's PostgreSQL
    backends, our Redis, this process, and the machine as a whole."""
    from sqlalchemy.engine import make_url

    redis_port = str(make_url(infra.REDIS_URL.replace("redis://", "redis+x://")).port or 6379)
    pg = redis = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        name = p.info["name"] or ""
        cmd = " ".join(p.info["cmdline"] or [])
        if name.startswith("postgres") and infra.DB_NAME in cmd:
            pg += _cpu(p)
        elif name.startswith("redis-server") and f":{redis_port}" in cmd:
            redis += _cpu(p)
    return {
        "server": _tree_cpu(psutil.Process(server.pid)),
        "sandbox": _cpu(psutil.Process(sandbox.proc.pid)),
        "postgres": pg,
        "redis": redis,
        "bench": _cpu(psutil.Process()),
        "machine": _busy(),
    }


def cpu_per_request(
    before: dict[str, float], after: dict[str, float], loadgen_s: float, requests: int
) -> dict[str, float]:
    """CPU milliseconds per answered request, per process kind; ``other`` is what the rest of
    the machine (processes outside this benchmark) used in the same time."""
    spent = {k: after[k] - before[k] for k in before}
    ours = sum(v for k, v in spent.items() if k != "machine") + loadgen_s
    out = {k: v * 1000 / max(1, requests) for k, v in spent.items() if k != "machine"}
    out["loadgen"] = loadgen_s * 1000 / max(1, requests)
    out["other"] = max(0.0, spent["machine"] - ours) * 1000 / max(1, requests)
    return {k: round(v, 3) for k, v in out.items()}


def load(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run bench/loadgen.py in its own process; returns its result and its CPU time."""
    import resource

    started = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="reauth-loadgen-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            cwd=infra.ROOT,
            env=dict(os.environ, PYTHONPATH=str(infra.ROOT)),
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            proc.communicate(json.dumps({**job, "out": str(out)}).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            infra.stop(proc)
            raise RuntimeError("the load generator did not finish") from None
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the load generator failed ({proc.returncode})")
        result: dict[str, Any] = json.loads(out.read_text())
    result["wall_s"] = round(time.perf_counter() - started, 2)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["loadgen_cpu_s"] = round(
        used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime, 3
    )
    return result


def wrk_load(urls: list[str], concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    """A closed-loop GET run under wrk (bench/serve_get.lua cycles through ``urls``, all on one
    origin): a warm-up run, then the measured one. Returns what bench/loadgen.py's closed mode
    returns (``answered_total`` counts the warm-up too), its CPU time included."""
    import resource

    origin = "{0.scheme}://{0.netloc}".format(urlsplit(urls[0]))
    body_bytes = len(httpx.get(urls[0], timeout=10).content)
    started = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    runs = []
    with tempfile.TemporaryDirectory(prefix="reauth-wrk-") as tmp:
        paths = Path(tmp) / "paths.txt"
        paths.write_text("".join(u[len(origin) :] + "\n" for u in urls))
        for length in (warmup, seconds):
            cmd = [
                str(WRK), "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(length))}s",
                "--timeout", "10s", "-s", str(HERE / "serve_get.lua"), origin, "--", str(paths),
            ]  # fmt: skip
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=length + 60, check=True
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
            runs.append(json.loads(line.removeprefix("WRK_JSON ")))
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = runs[-1]
    n, bad = int(res["requests"]), int(res["non_2xx"])
    errors = sum(int(res[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    statuses = {"2xx": n - bad} | ({"not 2xx": bad} if bad else {})
    return {
        "client": "wrk",
        "requests": n,
        "seconds": round(res["duration_us"] / 1e6, 2),
        "per_s": round(n / (res["duration_us"] / 1e6), 1),
        "statuses": statuses | ({"socket errors": errors} if errors else {}),
        "p50_ms": round(res["p50_us"] / 1000, 2),
        "p99_ms": round(res["p99_us"] / 1000, 2),
        "body_bytes": body_bytes,
        "answered_total": sum(int(r["requests"]) for r in runs),
        "wall_s": round(time.perf_counter() - started, 2),
        "loadgen_cpu_s": round(
            used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime, 3
        ),
    }


# --- the runs -------------------------------------------------------------------------------------


def links(db_url: str) -> list[dict[str, Any]]:
    """Every notification's reconnect_url with its member, in member order."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT n.payload->>'reconnect_url' AS url, n.member_id, "
                    "n.payload->>'oauth_window_uri' AS uri "
                    "FROM notifications n ORDER BY n.member_id"
                )
            ).all()
    finally:
        engine.dispose()
    return [{"url": r.url, "member_id": r.member_id, "uri": r.uri} for r in rows]


def link_modes(db_url: str, sb: infra.Sandbox, *, members: int, users: int) -> list[dict[str, Any]]:
    """The same population scanned once per REAUTH_LINK_MODE: MX calls at scan time."""
    rows = []
    for mode in ("both", "reconnect"):
        infra.reset_tables(db_url)
        infra.flush_redis()
        infra.seed_members(db_url, total=members, due=members, now=_now(), users=users)
        sb.configure(latency=0.0)
        sb.clear_log()
        env = serve_env(db_url, sb, "http://127.0.0.1:1", REAUTH_LINK_MODE=mode)
        before = sb.stats()
        scan = scan_inline(env)
        after = sb.stats()
        found = links(db_url)
        uris = after.get("uris", 0) - before.get("uris", 0)
        rows.append(
            {
                "kind": "link_mode",
                "mode": mode,
                "members": members,
                "notifications": len(found),
                "scan_mx_uri_calls": uris,
                "scan_mx_calls_per_member": round(uris / members, 3),
                "sessions_created": after.get("sessions_created", 0)
                - before.get("sessions_created", 0),
                "with_oauth_window_uri": sum(1 for f in found if f["uri"]),
                "with_reconnect_url": sum(1 for f in found if f["url"]),
                "scan_s": scan["seconds"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _now() -> datetime:
    from worker.clock import utc_now

    return utc_now()


def get_run(
    name: str,
    urls: list[str],
    proc: subprocess.Popen[bytes],
    sb: infra.Sandbox,
    args: argparse.Namespace,
) -> dict[str, Any]:
    job = {
        "mode": "closed",
        "urls": urls,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "warmup": 2.0,
    }
    cpu0 = cpu_snapshot(proc, sb)
    if args.client == "wrk":
        res = wrk_load(urls, args.concurrency, args.seconds, warmup=2.0)
    else:
        res = load(job, timeout=args.seconds + 60)
    cpu1 = cpu_snapshot(proc, sb)
    # CPU is counted over the whole job (warm-up included), so it is divided by every request
    # answered in it.
    answered = res["answered_total"]
    row = {
        "kind": "get",
        "target": name,
        "concurrency": args.concurrency,
        **res,
        "server_cores": round((cpu1["server"] - cpu0["server"]) / res["wall_s"], 2),
        "cpu_ms": cpu_per_request(cpu0, cpu1, res["loadgen_cpu_s"], answered),
    }
    print(json.dumps(row), flush=True)
    return row


def post_run(
    db_url: str,
    sb: infra.Sandbox,
    found: list[dict[str, Any]],
    proc: subprocess.Popen[bytes],
    args: argparse.Namespace,
    *,
    rate: float,
) -> dict[str, Any]:
    """The open loop at ``rate``: a second of warm-up presses, then the measured ones. Takes
    its links off the front of ``found`` (each member is pressed once in the whole run)."""
    from sqlalchemy import create_engine, text

    sb.configure(latency=args.latency)
    n = int(rate * args.seconds)
    warm = int(rate)  # one second of presses: connections and MX sessions exist after it
    if len(found) < warm + n:
        raise SystemExit(f"needs {warm + n} more links, {len(found)} left")
    load({"mode": "open", "urls": [f["url"] for f in found[:warm]], "rate": rate}, 120)
    measured = found[warm : warm + n]
    del found[: warm + n]
    before = sb.stats().get("uris", 0)
    cpu0 = cpu_snapshot(proc, sb)
    res = load(
        {"mode": "open", "urls": [f["url"] for f in measured], "rate": rate},
        args.seconds + 120,
    )
    cpu1 = cpu_snapshot(proc, sb)
    mx_calls = sb.stats().get("uris", 0) - before
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            mx_ms = {
                r.member_id: float(r.latency_ms)
                for r in conn.execute(
                    text("SELECT member_id, latency_ms FROM attempts WHERE trigger = 'click'")
                )
            }
    finally:
        engine.dispose()
    samples = []
    for r in res.pop("results"):
        member = measured[r["i"]]["member_id"]
        samples.append(
            {
                "status": r["status"],
                "total_ms": r["ms"],
                "lag_ms": r["lag_ms"],
                "mx_ms": mx_ms.get(member),
            }
        )
    row = {
        "kind": "post",
        "latency_s": args.latency,
        **res,
        **report.post_summary(samples, args.latency * 1000),
        "mx_uri_calls": mx_calls,
        "cpu_ms": cpu_per_request(cpu0, cpu1, res["loadgen_cpu_s"], len(samples)),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from worker.logging import configure_logging

    configure_logging(fmt="console", level="WARNING")  # the inline scans' per-member lines
    started = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="reauth-bench-serve-"))
    print(f"logs in {logs}", flush=True)
    rows: list[dict[str, Any]] = []
    n_links = int(sum(args.rates) * (args.seconds + 1)) + 100
    db_url = infra.fresh_database()
    infra.flush_redis()
    env_info = infra.environment(db_url, packages=("uvicorn", "starlette", "uvloop", "httptools"))
    env_info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        with infra.sandbox_process(0.0, logs / "sandbox.log") as sb:
            rows += link_modes(db_url, sb, members=args.link_mode_members, users=args.users)

            infra.reset_tables(db_url)
            infra.flush_redis()
            infra.seed_members(db_url, total=n_links, due=n_links, now=_now(), users=args.users)
            port = infra.free_port()
            public = f"http://127.0.0.1:{port}"
            env = serve_env(db_url, sb, public, REAUTH_LINK_MODE="reconnect")
            seeded = scan_inline(env)
            found = links(db_url)
            print(f"seeded {len(found)} links in {seeded['seconds']} s", flush=True)

            hello_port = infra.free_port()
            hello_env = dict(os.environ, PYTHONPATH=str(infra.ROOT))
            hello_url = f"http://127.0.0.1:{hello_port}/"
            with server(
                ["-m", "bench.hello", str(hello_port)], hello_env, hello_url, logs / "hello.log"
            ) as hello:
                rows.append(get_run("baseline", [hello_url], hello, sb, args))
            serve_args = ["-m", "worker", "serve", "--host", "127.0.0.1", "--port", str(port)]
            serve_args += ["--workers", str(args.workers)]
            with server(serve_args, env, f"{public}/healthz", logs / "serve.log") as srv:
                rows.append(get_run("healthz", [f"{public}/healthz"], srv, sb, args))
                rows.append(get_run("page", [f["url"] for f in found], srv, sb, args))
                left = list(found)
                for rate in sorted(args.rates):
                    rows.append(post_run(db_url, sb, left, srv, args, rate=rate))
    finally:
        if not args.keep_db:
            infra.drop_database()
        infra.flush_redis()
    env_info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    serve = {
        "command": "uv run python -m bench serve" + (" " + shlex.join(argv or [])).rstrip(),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - started, 1),
        "config": {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "client": args.client,
            "workers": args.workers,
            "rates": sorted(args.rates),
            "latency_s": args.latency,
            "users": args.users,
            "links": len(found),
            "link_mode_members": args.link_mode_members,
        },
        "environment": env_info,
        "rows": rows,
    }
    serve["targets"] = report.serve_targets(serve)
    write(serve, args.out)


def write(serve: dict[str, Any], out: Path) -> None:
    """Put the run under ``serve`` in results.json (other runs kept) and rewrite RESULTS.md."""
    report.write_and_tell(out, "serve", serve, serve["targets"])


if __name__ == "__main__":
    main()
