"""The global rate limit cannot be poisoned (worker/mx/ratelimit.py).

The incident: REAUTH_MX_RATE_LIMIT_PER_SECOND=0.01 pushed the shared next-slot time about ten
minutes ahead, and every worker stalled even after the setting was fixed. Pinned here: the
setting is bounded, no wait for a slot exceeds the request timeout (nothing is reserved beyond
it), and a changed setting takes effect at once even on state a slow setting left behind.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from mx_helpers import MxEnv, browser, run

from worker.config import load_settings
from worker.errors import ConfigError, RateLimitBacklog
from worker.mx.ratelimit import KEY_PREFIX, LocalRateLimiter, RedisRateLimiter


def test_a_rate_below_one_per_second_is_refused() -> None:
    """0.01/s is a configuration error, not a slot schedule ten minutes long."""
    with pytest.raises(ConfigError, match="REAUTH_MX_RATE_LIMIT_PER_SECOND"):
        load_settings(mx_rate_limit_per_second=0.01)


def test_local_limiter_never_waits_past_max_wait() -> None:
    """In process: the first call goes at once; one whose slot is beyond max_wait is refused at
    once (RateLimitBacklog, with when to come back) and reserves nothing."""

    async def go() -> tuple[float, float | None, float, float]:
        limiter = LocalRateLimiter(2.0, max_wait=0.3)  # one slot every 0.5 s
        first = await limiter.acquire()
        started = time.monotonic()
        with pytest.raises(RateLimitBacklog) as info:
            await limiter.acquire()
        refused_after = time.monotonic() - started
        await asyncio.sleep(0.25)  # now the next slot is 0.25 s away: within max_wait
        waited = await limiter.acquire()
        return first, info.value.retry_after, refused_after, waited

    first, retry_after, refused_after, waited = run(go())
    assert first == 0
    assert retry_after is not None
    assert 0.4 < retry_after <= 0.5
    assert refused_after < 0.05
    assert 0.1 < waited <= 0.3  # the refused call took no slot, so this one is not pushed back


def test_shared_limiter_reserves_only_within_max_wait(redis_url: str) -> None:
    """Through Redis: of ten callers arriving together at 10/s with max_wait 0.35 s, the four
    whose slots fall within 0.35 s go, the others are refused at once."""

    async def go() -> tuple[int, int, float]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            limiter = RedisRateLimiter(client, 10.0, key=f"{KEY_PREFIX}t1", max_wait=0.35)
            started = time.monotonic()
            results = await asyncio.gather(
                *(limiter.acquire() for _ in range(10)), return_exceptions=True
            )
            took = time.monotonic() - started
        finally:
            await client.aclose()
        refused = sum(isinstance(r, RateLimitBacklog) for r in results)
        return 10 - refused, refused, took

    went, refused, took = run(go())
    assert (went, refused) == (4, 6)
    assert took < 0.6


def test_a_fixed_setting_takes_effect_at_once_on_poisoned_state(redis_url: str) -> None:
    """State left by a very slow limiter (0.01/s, slots booked far ahead, as an unbounded
    setting once did) does not stall a limiter with the fixed setting: the booked slots are
    respaced at the new rate, and 50 calls at 200/s finish in well under a second."""

    async def go() -> tuple[int, float]:
        client = aioredis.Redis.from_url(redis_url)
        key = f"{KEY_PREFIX}poisoned"
        try:
            # Bypass the settings bound, as a misconfigured older worker would have.
            slow = RedisRateLimiter(client, 0.01, key=key, max_wait=3600.0)
            for _ in range(6):
                await slow.reserve(1)  # 6 slots, 100 s apart: the next free one is 10 min out
            fixed = RedisRateLimiter(client, 200.0, key=key, max_wait=2.0)
            started = time.monotonic()
            results = await asyncio.gather(
                *(fixed.acquire() for _ in range(50)), return_exceptions=True
            )
            took = time.monotonic() - started
        finally:
            await client.aclose()
        return sum(not isinstance(r, BaseException) for r in results), took

    went, took = run(go())
    assert went == 50
    assert took < 1.0


def test_no_mx_call_waits_longer_than_the_timeout_for_a_slot(served: MxEnv) -> None:
    """End to end, with the lowest allowed rate: of five concurrent Platform calls, one is
    sent and the others fail fast with RateLimitBacklog (transient) instead of queueing for
    seconds; with the setting raised, the next calls flow at once."""

    async def slow() -> tuple[int, int, float]:
        async with served.client(
            mx_api="platform", mx_rate_limit_per_second=1.0, mx_timeout=0.5
        ) as mx:
            started = time.monotonic()
            results = await asyncio.gather(
                *(mx.generate_oauth_window_uri(browser(f"MBR-{i}")) for i in range(5)),
                return_exceptions=True,
            )
            took = time.monotonic() - started
        backlog = sum(isinstance(r, RateLimitBacklog) for r in results)
        return 5 - backlog, backlog, took

    async def fixed() -> float:
        async with served.client(mx_api="platform", mx_rate_limit_per_second=200.0) as mx:
            started = time.monotonic()
            await asyncio.gather(
                *(mx.generate_oauth_window_uri(browser(f"MBR-f{i}")) for i in range(20))
            )
            return time.monotonic() - started

    sent, backlog, took = run(slow())
    assert (sent, backlog) == (1, 4)
    assert took < 0.5
    assert run(fixed()) < 0.5
