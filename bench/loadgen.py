"""The serve benchmark's load generator: an aiohttp client in its own process, so it does not
share an event loop (or a GIL) with the server it measures. Reads a JSON job on stdin and writes
one JSON result to the file the job names (``out``)::

    {"mode": "closed", "urls": [...], "concurrency": 32, "seconds": 10, "warmup": 2}
    {"mode": "open", "urls": [...], "rate": 200, "method": "POST"}
    {"mode": "open", "urls": [...], "rate": 1000, "bodies": [...], "headers": {...}}

* ``closed``: ``concurrency`` workers on keep-alive connections, each sending its next GET as
  soon as the previous one is answered, cycling through ``urls``; requests answered in the
  first ``warmup`` seconds are not counted. Returns requests/s and latency percentiles.
* ``open``: request ``i`` is due at ``start + i / rate`` whatever happened to the others (an
  open loop: a slow server makes requests pile up instead of slowing the sender down). Each
  request's latency runs from its due time, so time spent waiting behind the client is counted
  too. Redirects are not followed. Returns every request (index, status, latency).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.report import percentile

TIMEOUT = aiohttp.ClientTimeout(total=30)


async def closed(
    urls: list[str], concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    size = 0
    answered = 0  # every answer, warm-up included (the server's CPU is divided by it)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        begin = time.perf_counter()
        counted_from = begin + warmup
        end = counted_from + seconds

        async def worker(k: int) -> None:
            nonlocal size, answered
            i = k
            while time.perf_counter() < end:
                sent = time.perf_counter()
                async with session.get(urls[i % len(urls)], allow_redirects=False) as answer:
                    body = await answer.read()
                done = time.perf_counter()
                answered += 1
                if counted_from <= done <= end:
                    statuses[answer.status] += 1
                    latencies.append((done - sent) * 1000)
                    size = len(body)
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    n = sum(statuses.values())
    return {
        "requests": n,
        "seconds": seconds,
        "per_s": round(n / seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": _round(percentile(latencies, 50)),
        "p99_ms": _round(percentile(latencies, 99)),
        "body_bytes": size,
        "answered_total": answered,
    }


async def open_loop(
    urls: list[str],
    rate: float,
    method: str,
    bodies: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)  # no cap: an open loop must not queue here
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        start = time.perf_counter() + 0.05
        start_epoch = time.time() + 0.05

        async def one(i: int) -> dict[str, Any]:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            try:
                body = bodies[i].encode() if bodies else None
                async with session.request(
                    method, urls[i], data=body, headers=headers, allow_redirects=False
                ) as answer:
                    await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = 0
                print(f"request {i}: {type(exc).__name__}", file=sys.stderr)
            done = time.perf_counter()
            return {
                "i": i,
                "status": status,
                "ms": round((done - due) * 1000, 3),
                "lag_ms": round((sent - due) * 1000, 3),
                "done_s": round(done - start, 4),
            }

        results = await asyncio.gather(*(one(i) for i in range(len(urls))))
    last = max((r["done_s"] for r in results), default=0.0)
    return {
        "requests": len(results),
        "rate": rate,
        "start_epoch": start_epoch,
        "seconds": round(last, 3),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "results": results,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def run(job: dict[str, Any]) -> dict[str, Any]:
    import uvloop  # the client's own loop cost is kept low, like the servers'

    if job["mode"] == "closed":
        return uvloop.run(
            closed(job["urls"], job["concurrency"], job["seconds"], job.get("warmup", 2.0))
        )
    return uvloop.run(
        open_loop(
            job["urls"], job["rate"], job.get("method", "POST"), job.get("bodies"),
            job.get("headers"),
        )
    )  # fmt: skip


if __name__ == "__main__":
    # The result goes to a file: stdout may be left non-blocking by the event loop, and a
    # large result written to a pipe could then be cut short.
    job = json.load(sys.stdin)
    Path(job["out"]).write_text(json.dumps(run(job)))
