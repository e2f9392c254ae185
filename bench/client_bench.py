"""Client benchmark: requests per second against the MX sandbox at 100 ms latency.

Not a test: run it by hand and record the figures in bench/README.md::

    uv run python -m bench.client_bench                 # 64 and 256 in flight
    uv run python -m bench.client_bench --concurrency 32 64 128 256 --requests 2000

The sandbox runs in a subprocess (``reauth sandbox``) so the client's event loop does not share
its process with the server's. Rows, all in the same run and at the same concurrency:

* ``MxClient (aiohttp transport)``: our client as shipped (Platform API: one request per call;
  in-process rate limiter set far above the load);
* ``MxClient (httpx default transport)``: our client with httpx's own transport injected;
* ``httpx.AsyncClient (default)``: a bare httpx loop, no client logic;
* ``aiohttp raw``: a bare aiohttp loop, the ceiling.

Every row reports req/s and the client process's **CPU µs per request** (``time.process_time``
over the counted requests; the sandbox runs in another process), and its CPU ratio to the raw
aiohttp row of the same run: the CPU figure hardly depends on what else the machine runs, so
it is the one to compare when the machine is shared. Every row runs on uvloop, as the worker
does. ``--rows`` picks rows (the httpx default transport rows are slow: ~64 req/s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import structlog

from bench.infra import API_KEY, CLIENT_ID, free_port
from worker.config import Settings
from worker.mx import OAuthRequest, build_mx_client


def start_sandbox(port: int, latency: float) -> subprocess.Popen[bytes]:
    code = "import sys; from worker.cli import main; main(sys.argv[1:])"
    args = ["sandbox", "--port", str(port), "--latency", str(latency)]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_sandbox/stats", timeout=0.5)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("sandbox did not start")


async def drive(
    call: Callable[[int], Awaitable[None]], requests: int, concurrency: int
) -> tuple[float, float]:
    """Run ``requests`` calls with at most ``concurrency`` in flight.

    Returns (req/s, CPU µs of this process per request), warm-up excluded.
    """
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await call(i)

    await asyncio.gather(*(one(i) for i in range(min(concurrency, 32))))  # warm connections
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return requests / elapsed, cpu / requests * 1e6


def settings(base: str, concurrency: int) -> Settings:
    return Settings(
        mx_api="platform",
        mx_base_url=base,
        mx_sso_base_url=f"{base}/sso",
        allow_insecure_urls=True,  # the sandbox serves plain http
        mx_client_id=CLIENT_ID,
        mx_api_key=API_KEY,
        mx_max_concurrency=concurrency,
        mx_rate_limit_per_second=1_000_000.0,
        mx_timeout=60.0,
        claim_lease="3m",  # at least three MX timeouts (the settings refuse less)
        redis_url=None,
    )


def request(i: int) -> OAuthRequest:
    return OAuthRequest(f"MBR-{i}", "USR-1", None, "BROWSER", False)


async def bench_mx(
    base: str, concurrency: int, requests: int, default_transport: bool
) -> tuple[float, float]:
    transport = (
        httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=concurrency))
        if default_transport
        else None
    )
    async with build_mx_client(settings(base, concurrency), transport=transport) as mx:

        async def call(i: int) -> None:
            await mx.generate_oauth_window_uri(request(i))

        return await drive(call, requests, concurrency)


def calls(base: str, n: int) -> tuple[list[str], dict[str, str]]:
    """The URLs (query encoded) and headers our client sends for ``n`` requests, from the same
    dialect (Accept, Accept-Version), plus Basic auth: the bare rows send what MxClient sends."""
    from urllib.parse import urlencode

    from worker.mx.api import dialect_for

    dialect = dialect_for(settings(base, 1))
    urls, headers = [], {}
    for i in range(n):
        call = dialect.oauth_window(request(i))
        urls.append(f"{call.url}?{urlencode(call.params)}" if call.params else call.url)
        headers = dict(call.headers)
    basic = base64.b64encode(f"{CLIENT_ID}:{API_KEY}".encode()).decode()
    headers["Authorization"] = f"Basic {basic}"
    return urls, headers


async def bench_httpx(base: str, concurrency: int, requests: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    urls, headers = calls(base, requests)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def call(i: int) -> None:
            answer = await client.get(urls[i], headers=headers)
            answer.raise_for_status()

        return await drive(call, requests, concurrency)


async def bench_aiohttp(base: str, concurrency: int, requests: int) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    urls, headers = calls(base, requests)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(i: int) -> None:
            async with session.get(urls[i], headers=headers) as answer:
                answer.raise_for_status()
                await answer.read()

        return await drive(call, requests, concurrency)


ROWS = {
    "mx": "MxClient (aiohttp transport)",
    "mx-httpx": "MxClient (httpx default transport)",
    "httpx": "httpx.AsyncClient (default)",
    "aiohttp": "aiohttp raw",
}


def run_all(
    base: str, concurrency: int, requests: int, rows: list[str]
) -> list[tuple[str, float, float]]:
    """The chosen rows for one concurrency, one fresh uvloop event loop each."""
    import uvloop

    runs: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {
        "mx": lambda: bench_mx(base, concurrency, requests, False),
        "mx-httpx": lambda: bench_mx(base, concurrency, requests, True),
        "httpx": lambda: bench_httpx(base, concurrency, requests),
        "aiohttp": lambda: bench_aiohttp(base, concurrency, requests),
    }
    out = []
    for key in rows:
        rate, cpu_us = uvloop.run(runs[key]())
        out.append((ROWS[key], rate, cpu_us))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, default=0, help="per row (default 10 x conc.)")
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument(
        "--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="which clients to run"
    )
    args = parser.parse_args()
    # As in production (INFO): the client's per-request DEBUG lines are not rendered.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,  # as worker.logging configures it
    )

    port = free_port()
    proc = start_sandbox(port, args.latency)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for concurrency in args.concurrency:
            requests = args.requests or max(1000, concurrency * 10)
            measured = run_all(base, concurrency, requests, args.rows)
            raw_cpu = next((c for n, _, c in measured if n == ROWS["aiohttp"]), None)
            for name, rate, cpu_us in measured:
                vs_raw = round(cpu_us / raw_cpu, 2) if raw_cpu else None
                rows.append(
                    {
                        "client": name,
                        "in_flight": concurrency,
                        "requests": requests,
                        "req_per_s": round(rate, 1),
                        "cpu_us_per_req": round(cpu_us, 1),
                        "cpu_vs_raw_aiohttp": vs_raw,
                    }
                )
                if not args.json:
                    print(
                        f"{name:36} in flight {concurrency:4} {requests:6} req {rate:8.1f} req/s"
                        f" {cpu_us:7.1f} us CPU/req ({vs_raw}x raw aiohttp)"
                    )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if args.json:
        print(json.dumps({"latency_s": args.latency, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
