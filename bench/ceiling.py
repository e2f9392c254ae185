"""The raw ceiling: a bare aiohttp loop against the sandbox's Nexus endpoint, no DB, no queue.

It makes the same call the pipeline makes per member (``GET /members/{guid}/oauth_window_uri``
with a valid ``MD-SESSION-TOKEN`` and the Nexus media type), reads and decodes the body, with a
fixed number in flight. Whatever this reaches is what the sandbox plus one client loop can do on
this machine: the pipeline is judged against it in the same run. With ``api="platform"`` it
calls the Platform endpoint instead (``GET /users/{user}/members/{guid}/oauth_window_uri``,
HTTP Basic, ``Accept-Version``), what the pipeline's Platform run calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp

from bench.infra import API_KEY, CLIENT_ID
from worker.mx import params as P
from worker.mx.api import platform_v20250224 as platform

#: A run never takes longer than this, whatever the request count.
MAX_SECONDS = 120.0


async def _session_token(http: aiohttp.ClientSession, base: str, user: str) -> str:
    async with http.get(
        f"{base}/sso{P.sso_token_path(CLIENT_ID, user)}",
        headers={P.HEADER_API_KEY: API_KEY, "Accept": P.SSO_MEDIA_TYPE},
    ) as r:
        r.raise_for_status()
        api_token = (await r.json(content_type=None))["api_token"]["token"]
    async with http.post(
        f"{base}{P.NEXUS_SESSIONS_PATH}",
        headers={
            P.HEADER_API_TOKEN: api_token,
            "Accept": P.NEXUS_MEDIA_TYPE,
            "Content-Type": P.NEXUS_MEDIA_TYPE,
        },
    ) as r:
        r.raise_for_status()
        return str((await r.json(content_type=None))["session"]["token"])


async def _run(base: str, in_flight: int, requests: int, api: str) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        if api == "platform":
            basic = base64.b64encode(f"{CLIENT_ID}:{API_KEY}".encode()).decode()
            headers = {
                "Authorization": f"Basic {basic}",
                "Accept": platform.MEDIA_TYPE,
                P.HEADER_ACCEPT_VERSION: platform.VERSION,
            }
            prefix = f"{base}/users/USR-ceiling"
        else:
            token = await _session_token(http, base, "USR-ceiling")
            headers = {P.HEADER_SESSION_TOKEN: token, "Accept": P.NEXUS_MEDIA_TYPE}
            prefix = base
        query = {P.Q_REFERRAL_SOURCE: P.REFERRAL_BROWSER, P.Q_SKIP_AGGREGATION: "false"}
        gate = asyncio.Semaphore(in_flight)
        errors = 0

        async def one(i: int) -> None:
            nonlocal errors
            async with gate:
                url = f"{prefix}{P.nexus_oauth_path(f'MBR-CEIL-{i:08d}')}"
                try:
                    async with http.get(url, headers=headers, params=query) as r:
                        body = await r.read()
                        if r.status != 200:
                            errors += 1
                            return
                        json.loads(body)
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1

        # Warm the connection pool first, like a long-running worker's is.
        await asyncio.gather(*(one(i) for i in range(in_flight)))
        errors = 0
        started = time.perf_counter()
        async with asyncio.timeout(MAX_SECONDS):
            await asyncio.gather(*(one(i) for i in range(requests)))
        elapsed = time.perf_counter() - started
    return {
        "requests": requests,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "per_s": round((requests - errors) / elapsed, 1),
    }


def raw_ceiling(
    base: str, *, in_flight: int, requests: int, api: str = "nexus"
) -> dict[str, float]:
    """``requests`` calls with ``in_flight`` at a time on a fresh loop; returns req/s and counts."""
    # The same event loop as the worker's (uvloop when installed), so the ceiling is fair.
    from worker.runtime import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_run(base, in_flight, requests, api))
