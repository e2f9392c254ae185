"""The global MX request rate limit: GCRA, shared through Redis or kept in process.

MX throttles per client (429), so the limit is global: every worker process of every host draws
from one budget of ``REAUTH_MX_RATE_LIMIT_PER_SECOND``. Every HTTP request to MX (SSO token,
session, OAuth window) takes one slot.

The algorithm is GCRA in *reservation* form with no burst: one key holds the "theoretical
arrival time" (TAT) of the next free slot. A caller atomically takes the slot
``max(TAT, now)``, moves TAT one interval (``1/rate``) later, and sleeps until its slot. Slots
are therefore spaced by at least one interval, whoever holds them, so in any half-open window of
one second at most ``rate`` requests start (``ceil(rate)`` for fractional rates). The clock is
Redis's own ``TIME`` inside a Lua script, so the hosts' clocks never need to agree and no
read-modify-write race exists between processes. Callers sleep a *relative* delay measured from
the script's answer, so only local clock rate matters.

Two rules keep the bound honest in the client (see :mod:`worker.mx.client`): a slot is taken
only after the concurrency semaphore is held, immediately before the request is sent (a slot
taken earlier and used late could bunch up with later slots); and a cancelled waiter's slot is
simply wasted, which errs on the slow side.

Without Redis the same arithmetic runs in process (one budget per process).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from worker.errors import MxConnectionError

#: Key prefix of the shared limiter state (one key per MX client id).
KEY_PREFIX = "reauth:mx:ratelimit:"

# KEYS[1]: TAT key (integer microseconds, Redis clock). ARGV[1]: interval in microseconds.
# ARGV[2]: how many consecutive slots to reserve (default 1).
# Returns the microseconds to wait before the first reserved slot starts (0 = now); the others
# follow one interval apart.
# string.format('%.0f') because tostring() on a 16-digit number loses digits in Lua 5.1.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2] or '1')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval * n
local ttl_ms = math.floor((nxt - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', ttl_ms)
return string.format('%.0f', tat - now)
"""


class RateLimiter(Protocol):
    """Waits until the caller may send one request."""

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        ...


def _interval_us(rate_per_second: float) -> int:
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    # Round the interval up so rounding never lets the limiter run above the configured rate.
    return max(1, math.ceil(1_000_000 / rate_per_second))


class LocalRateLimiter:
    """GCRA in one process (no Redis configured): the same spacing, one budget per process."""

    def __init__(self, rate_per_second: float) -> None:
        self._interval = _interval_us(rate_per_second) / 1e6
        self._tat = 0.0

    async def acquire(self) -> float:
        # No await between reading and writing _tat, so no lock is needed on one event loop.
        now = time.monotonic()
        slot = max(self._tat, now)
        self._tat = slot + self._interval
        wait = slot - now
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


class RedisRateLimiter:
    """GCRA shared by every process that uses the same Redis and key."""

    def __init__(self, redis: aioredis.Redis, rate_per_second: float, *, key: str) -> None:
        self._redis = redis
        self._interval_us = _interval_us(rate_per_second)
        self._key = key
        self._script = redis.register_script(_GCRA_LUA)
        self._waiters: list[asyncio.Future[float]] = []
        self._flushing = False

    async def reserve(self, n: int = 1) -> float:
        """Take the next ``n`` slots; returns the seconds until the first starts (no sleeping).

        The others start one interval apart after it.
        """
        try:
            raw = await self._script(keys=[self._key], args=[self._interval_us, n])
        except (RedisError, OSError) as exc:
            raise MxConnectionError(
                f"MX rate limiter: Redis unavailable ({exc.__class__.__name__})"
            ) from exc
        return max(0, int(raw)) / 1e6

    async def acquire(self) -> float:
        # Callers arriving together (a batch's calls released by the semaphore at once) share
        # one script call that reserves a run of consecutive slots, one per caller: the same
        # spacing as one call each, for one Redis round trip instead of many.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        self._waiters.append(fut)
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._reserve_for_waiters())  # noqa: RUF006 - result via futures
        wait = await fut
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    async def _reserve_for_waiters(self) -> None:
        try:
            await asyncio.sleep(0)  # let the callers of this loop iteration join in
            waiters, self._waiters = self._waiters, []
        finally:
            self._flushing = False
        if not waiters:
            return
        try:
            first = await self.reserve(len(waiters))
        except MxConnectionError as exc:
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            return
        interval = self._interval_us / 1e6
        for i, w in enumerate(waiters):
            if not w.done():  # a cancelled caller's slot is simply wasted (errs slow)
                w.set_result(first + i * interval)
