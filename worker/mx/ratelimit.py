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

Two rules keep the bound honest in the client (see :mod:`worker.mx.client`): no request
starts before its slot, nor more than :data:`PERMIT_GRACE` after it (a slot used late bunches
up with later ones); and a cancelled waiter's slot is simply wasted, which errs on the slow
side. The slot is reserved *before* the in-flight cap (a :class:`Permit`: ``MxClient.admit``
before the batch's gate, or at the start of ``_exchange`` before the semaphore), so the Redis
round trip holds no in-flight slot; inside the cap the request sleeps until its slot, or, if
the permit is more than ``PERMIT_GRACE`` old by then, takes a new slot right there. Hence in
any one-second window at most ``rate x (1 + PERMIT_GRACE) + 1`` requests start, plus what the
event loop's own wake-up lag adds (a request whose sleep ends late is sent late; any sleeping
limiter has that, and it was there before permits). Why a grace
at all: the calls of a batch get their slots together and then run one after another on one
event loop; under CPU load the last of a wave of 200 reaches its socket 100-200 ms after its
slot (measured by ``python -m bench.waits``, ``rate_permit_stale``). Taking the slot inside the
cap, as before, had exactly that lateness too, with no bound at all.

The shared state cannot be poisoned (a rate of 0.01/s once pushed the next slot ten minutes
ahead and stalled every worker even after the setting was fixed):

* the setting is bounded (REAUTH_MX_RATE_LIMIT_PER_SECOND at least 1);
* no caller waits longer than ``max_wait`` (the request timeout) for a slot: when the next slot
  is further away, nothing is reserved and :class:`worker.errors.RateLimitBacklog` tells the
  caller when to come back, so one slow setting can only ever reserve about one interval ahead;
* the interval is stored with the TAT, and a caller with another interval first rescales the
  outstanding backlog to its own spacing, so a changed setting takes effect at once.

Without Redis the same arithmetic runs in process (one budget per process).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from worker.errors import MxConnectionError, RateLimitBacklog

#: Key prefix of the shared limiter state (one hash per MX client id: ``tat``, ``interval``).
#: Not the pre-bound ``ratelimit:`` string key, whose state an older worker may have poisoned.
KEY_PREFIX = "reauth:mx:rate:"

# KEYS[1]: the state hash (integer microseconds, Redis clock). ARGV[1]: interval (us).
# ARGV[2]: how many consecutive slots are wanted. ARGV[3]: the longest wait allowed (us).
# Returns {k, wait}: k slots reserved (0: none, the next slot is more than max_wait away), the
# first starting in `wait` microseconds and the others one interval apart.
# string.format('%.0f') because tostring() on a 16-digit number loses digits in Lua 5.1.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tat', 'interval')
local tat = tonumber(state[1] or '0') or 0
local old = tonumber(state[2] or ARGV[1]) or interval
if tat < now then
  tat = now
elseif old ~= interval and old > 0 then
  -- The setting changed: what is booked ahead was booked at the old spacing; count it in slots
  -- and respace it at ours, so a fixed setting takes effect at once.
  tat = now + math.floor((tat - now) * interval / old)
end
local wait = tat - now
local k = 0
if wait <= max_wait then
  k = math.min(n, math.floor((max_wait - wait) / interval) + 1)
end
local nxt = tat + interval * k
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', nxt), 'interval', ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.floor((nxt - now) / 1000) + 1000)
return {k, wait}
"""


#: Longest a request may start after its slot (seconds); an older permit is not used.
PERMIT_GRACE = 0.25


class Permit:
    """One reserved slot, taken ahead of the in-flight cap: the loop time it starts at."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    async def use(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait for the slot; ``False`` (nothing waited) when it is too old to use."""
        lateness = loop.time() - self.at
        if lateness > PERMIT_GRACE:
            return False
        if lateness < 0:
            await asyncio.sleep(-lateness)
        return True


class RateLimiter(Protocol):
    """Waits until the caller may send one request."""

    async def permit(self) -> Permit:
        """Reserve a slot without waiting for it (taken before the in-flight cap).

        Raises the same errors as :meth:`acquire`.
        """
        ...

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited.

        Raises:
            RateLimitBacklog: no slot within ``max_wait``; nothing was reserved.
            MxConnectionError: the shared state is unreachable.
        """
        ...


def _interval_us(rate_per_second: float) -> int:
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive")
    # Round the interval up so rounding never lets the limiter run above the configured rate.
    return max(1, math.ceil(1_000_000 / rate_per_second))


def _backlog(wait: float) -> RateLimitBacklog:
    return RateLimitBacklog(
        f"MX rate limit: next slot in {wait:.1f}s, beyond REAUTH_MX_TIMEOUT; nothing sent",
        retry_after=wait,
    )


class LocalRateLimiter:
    """GCRA in one process (no Redis configured): the same spacing, one budget per process."""

    def __init__(self, rate_per_second: float, *, max_wait: float) -> None:
        self._interval = _interval_us(rate_per_second) / 1e6
        self._max_wait = max_wait
        self._tat = 0.0

    def _take(self) -> float:
        # No await between reading and writing _tat, so no lock is needed on one event loop.
        now = time.monotonic()
        slot = max(self._tat, now)
        wait = slot - now
        if wait > self._max_wait:
            raise _backlog(wait)
        self._tat = slot + self._interval
        return wait

    async def permit(self) -> Permit:
        return Permit(asyncio.get_running_loop().time() + self._take())

    async def acquire(self) -> float:
        wait = self._take()
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


class RedisRateLimiter:
    """GCRA shared by every process that uses the same Redis and key."""

    def __init__(
        self, redis: aioredis.Redis, rate_per_second: float, *, key: str, max_wait: float
    ) -> None:
        self._redis = redis
        self._interval_us = _interval_us(rate_per_second)
        self._max_wait_us = max(0, int(max_wait * 1_000_000))
        self._key = key
        self._script = redis.register_script(_GCRA_LUA)
        self._waiters: list[asyncio.Future[float]] = []
        self._flushing = False

    async def reserve(self, n: int = 1) -> tuple[int, float]:
        """Take up to ``n`` consecutive slots within ``max_wait`` (no sleeping).

        Returns how many were taken (0 when the next slot is beyond ``max_wait``) and the
        seconds until the first starts; the others start one interval apart after it.
        """
        try:
            raw = await self._script(
                keys=[self._key], args=[self._interval_us, n, self._max_wait_us]
            )
        except (RedisError, OSError) as exc:
            raise MxConnectionError(
                f"MX rate limiter: Redis unavailable ({exc.__class__.__name__})"
            ) from exc
        taken, wait = int(raw[0]), max(0, int(raw[1])) / 1e6
        return taken, wait

    async def permit(self) -> Permit:
        # Callers arriving together (a batch's calls, admitted at once) share one script call
        # that reserves a run of consecutive slots, one per caller: the same spacing as one
        # call each, for one Redis round trip instead of many.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        self._waiters.append(fut)
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._reserve_for_waiters())  # noqa: RUF006 - result via futures
        return Permit(await fut)

    async def acquire(self) -> float:
        loop = asyncio.get_running_loop()
        asked = loop.time()
        permit = await self.permit()
        # Slots are absolute loop times: a caller resumed after its slot sends at once (no
        # timer per caller when many wake together).
        wait = permit.at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        return max(0.0, permit.at - asked)

    async def _reserve_for_waiters(self) -> None:
        try:
            await asyncio.sleep(0)  # let the callers of this loop iteration join in
            waiters, self._waiters = self._waiters, []
        finally:
            self._flushing = False
        if not waiters:
            return
        try:
            taken, first = await self.reserve(len(waiters))
        except MxConnectionError as exc:
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            return
        interval = self._interval_us / 1e6
        # The script's relative wait, from when its answer arrived (only local clock rate
        # matters, as before).
        base = asyncio.get_running_loop().time() + first
        for i, w in enumerate(waiters):
            if w.done():  # a cancelled caller's slot is simply wasted (errs slow)
                continue
            if i < taken:
                w.set_result(base + i * interval)
            else:
                w.set_exception(_backlog(first + i * interval))
