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

PLATFORM_ACCEPT = "application/vnd.mx.api.v1+json"


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


async def drive(call: Callable[[int], Awaitable[None]], requests: int, concurrency: int) -> float:
    """Run ``requests`` calls with at most ``concurrency`` in flight; returns req/s."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await call(i)

    await asyncio.gather(*(one(i) for i in range(min(concurrency, 32))))  # warm connections
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return requests / (time.perf_counter() - started)


def settings(base: str, concurrency: int) -> Settings:
    return Settings(
        mx_api="platform",
        mx_base_url=base,
        mx_sso_base_url=f"{base}/sso",
        mx_client_id=CLIENT_ID,
        mx_api_key=API_KEY,
        mx_max_concurrency=concurrency,
        mx_rate_limit_per_second=1_000_000.0,
        mx_timeout=60.0,
        redis_url=None,
        allow_insecure_urls=True,
    )


def request(i: int) -> OAuthRequest:
    return OAuthRequest(f"MBR-{i}", "USR-1", None, "BROWSER", False)


async def bench_mx(base: str, concurrency: int, requests: int, default_transport: bool) -> float:
    transport = (
        httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=concurrency))
        if default_transport
        else None
    )
    async with build_mx_client(settings(base, concurrency), transport=transport) as mx:

        async def call(i: int) -> None:
            await mx.generate_oauth_window_uri(request(i))

        return await drive(call, requests, concurrency)


def path(i: int) -> str:
    return f"/users/USR-1/members/MBR-{i}/oauth_window_uri"


async def bench_httpx(base: str, concurrency: int, requests: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) as client:

        async def call(i: int) -> None:
            answer = await client.get(
                path(i), auth=(CLIENT_ID, API_KEY), headers={"Accept": PLATFORM_ACCEPT}
            )
            answer.raise_for_status()

        return await drive(call, requests, concurrency)


async def bench_aiohttp(base: str, concurrency: int, requests: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    basic = base64.b64encode(f"{CLIENT_ID}:{API_KEY}".encode()).decode()
    headers = {"Accept": PLATFORM_ACCEPT, "Authorization": f"Basic {basic}"}
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def call(i: int) -> None:
            async with session.get(path(i), headers=headers) as answer:
                answer.raise_for_status()
                await answer.read()

        return await drive(call, requests, concurrency)


def run_all(base: str, concurrency: int, requests: int) -> list[tuple[str, float]]:
    """Every row for one concurrency, one fresh event loop each."""
    runs: list[tuple[str, Callable[[], Awaitable[float]]]] = [
        ("MxClient (aiohttp transport)", lambda: bench_mx(base, concurrency, requests, False)),
        ("MxClient (httpx default transport)", lambda: bench_mx(base, concurrency, requests, True)),
        ("httpx.AsyncClient (default)", lambda: bench_httpx(base, concurrency, requests)),
        ("aiohttp raw", lambda: bench_aiohttp(base, concurrency, requests)),
    ]  # fmt: skip

    async def timed(run: Callable[[], Awaitable[float]]) -> float:
        return await run()

    return [(name, asyncio.run(timed(run))) for name, run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, default=0, help="per row (default 10 x conc.)")
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    # As in production (INFO): the client's per-request DEBUG lines are not rendered.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))

    port = free_port()
    proc = start_sandbox(port, args.latency)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for concurrency in args.concurrency:
            requests = args.requests or max(1000, concurrency * 10)
            for name, rate in run_all(base, concurrency, requests):
                rows.append(
                    {"client": name, "in_flight": concurrency, "requests": requests,
                     "req_per_s": round(rate, 1)}
                )  # fmt: skip
                if not args.json:
                    print(f"{name:36} in flight {concurrency:4} {requests:6} req {rate:8.1f} req/s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if args.json:
        print(json.dumps({"latency_s": args.latency, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
