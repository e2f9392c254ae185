"""worker.redis_options: every new Redis connection reuses the process's one DriverInfo (no
package-metadata read per connection), which still carries the library's name and version for
CLIENT SETINFO (shown by Redis 7.2 and later)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from worker.redis_options import client_options


def test_new_connections_read_no_package_metadata_and_still_name_the_library(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool that grows to 50 connections under a burst never looks up redis-py's version
    (it was looked up once, before); what each connection would report is still right."""
    import redis.utils

    options = client_options()  # built once per process, before the burst
    reads: list[str] = []
    real = redis.utils.get_lib_version
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: reads.append("x") or real())

    async def burst() -> list[dict[str, str]]:
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=64, client_name="reauth-test-burst", **options
        )
        client = aioredis.Redis.from_pool(pool)
        try:
            await asyncio.gather(
                *(client.blpop(["reauth:test:none"], timeout=0.1) for _ in range(50))
            )
            names = [c["name"] for c in await client.client_list()]
            assert names.count("reauth-test-burst") >= 50  # the pool grew to 50 connections
            return [dict(pool.connection_kwargs)]
        finally:
            await client.aclose()

    (kwargs,) = asyncio.run(burst())
    sync = redis.Redis.from_url(redis_url, **client_options())
    try:
        assert sync.ping()
    finally:
        sync.close()
    assert reads == []
    info = kwargs["driver_info"]
    assert info is client_options()["driver_info"]
    assert (info.formatted_name, info.lib_version) == ("redis-py", real())
