"""Is a credential refusal about one user or about the whole client? The fleet-wide rule.

MX answers some refusals the same way whether one user is the problem or our client is: the SSO
API's 404 means "Nexus not enabled for this client" *and* is what an unknown user gets; a 401 or
403 from SSO or the Platform API may be a disabled user as well as a wrong API key. Pausing
every worker on one user's problem would let one user stop the fleet; never pausing would spend
every member's attempts on a broken key. The operational rule (docs/MX.md):

    refusals for ``REAUTH_MX_CREDENTIAL_FAILURE_USERS`` distinct users within
    ``REAUTH_MX_CREDENTIAL_FAILURE_WINDOW``, with no success in between, are client-wide.

Below that, a refusal is that user's members' transient problem. A *scope* separates the kinds
of evidence (``sso``, ``platform``, ``nexus``): a Nexus call succeeding with a cached session says
nothing about whether the SSO API still accepts our key.

The tally is shared by every worker through Redis when one is configured (a sorted set of
users by last refusal time, plus the time of the last success, on Redis's own clock), in
process otherwise. Writing every success to Redis would cost a round trip per MX call, so
successes are written at most every :data:`SUCCESS_FLUSH_SECONDS` (a skipped one is flushed
later), and a refusal that reaches the threshold only counts once the threshold has held for
:data:`CONFIRM_SECONDS`, longer than that flush delay. A refusal below the threshold waits up to
:data:`HOLD_SECONDS` for the verdict of the other calls in flight, so a wrong key found by a
batch of many users pauses at once instead of spending the first users' attempts.

Keys: ``reauth:mx:health:<client id>:<scope>:refused`` and ``...:<scope>:ok``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Final, Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from worker.errors import MxConnectionError

log = structlog.get_logger(__name__)

KEY_PREFIX: Final = "reauth:mx:health:"
#: Longest a refusal below the threshold waits for other calls' verdicts.
HOLD_SECONDS: Final = 1.0
#: How long the threshold must hold before it counts (covers delayed success writes).
CONFIRM_SECONDS: Final = 0.3
#: A process writes a success at most this often per scope.
SUCCESS_FLUSH_SECONDS: Final = 0.2
#: Poll interval while holding.
POLL_SECONDS: Final = 0.05

SCOPE_SSO: Final = "sso"
SCOPE_PLATFORM: Final = "platform"
SCOPE_NEXUS: Final = "nexus"


class RefusalTally(Protocol):
    """Distinct users refused since the last success, within a window. Methods may raise
    :class:`MxConnectionError` (shared store unreachable)."""

    async def refused(self, scope: str, user: str) -> int:
        """Record a refusal for ``user``; return the distinct users now counted."""
        ...

    async def count(self, scope: str) -> int:
        """Distinct users refused since the last success, within the window."""
        ...

    async def succeeded(self, scope: str) -> None:
        """A success: refusals before now no longer count."""
        ...


class MemoryTally:
    """In-process tally (no Redis configured), on the monotonic clock."""

    def __init__(self, window: timedelta) -> None:
        self._window = window.total_seconds()
        self._refused: dict[str, dict[str, float]] = {}
        self._ok: dict[str, float] = {}

    def _count(self, scope: str, now: float) -> int:
        since = max(self._ok.get(scope, float("-inf")), now - self._window)
        users = self._refused.get(scope, {})
        for user in [u for u, t in users.items() if t <= now - self._window]:
            del users[user]
        return sum(1 for t in users.values() if t > since)

    async def refused(self, scope: str, user: str) -> int:
        now = time.monotonic()
        self._refused.setdefault(scope, {})[user] = now
        return self._count(scope, now)

    async def count(self, scope: str) -> int:
        return self._count(scope, time.monotonic())

    async def succeeded(self, scope: str) -> None:
        self._ok[scope] = time.monotonic()


# All times are Redis TIME in microseconds, formatted with %.0f (Lua 5.1's tostring keeps only
# 14 digits). KEYS[1]: the refused set, KEYS[2]: the last-success time. ARGV[1]: window (us).
_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local ok = tonumber(redis.call('GET', KEYS[2]) or '0')
local since = math.max(ok, now - window)
"""
_REFUSED_LUA = (
    _NOW_LUA
    + """
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', since), '+inf')
"""
)
_COUNT_LUA = (
    _NOW_LUA
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.0f', since), '+inf')
"""
)
_SUCCEEDED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl_ms = math.floor(tonumber(ARGV[1]) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', now), 'PX', ttl_ms)
return 1
"""


class RedisTally:
    """The tally shared by every process using the same Redis and client id."""

    def __init__(self, redis: aioredis.Redis, window: timedelta, *, namespace: str) -> None:
        self._window_us = max(1, int(window.total_seconds() * 1_000_000))
        self._namespace = namespace
        self._refused = redis.register_script(_REFUSED_LUA)
        self._count = redis.register_script(_COUNT_LUA)
        self._succeeded = redis.register_script(_SUCCEEDED_LUA)

    def _keys(self, scope: str) -> list[str]:
        base = f"{KEY_PREFIX}{self._namespace}:{scope}"
        return [f"{base}:refused", f"{base}:ok"]

    async def refused(self, scope: str, user: str) -> int:
        try:
            return int(await self._refused(keys=self._keys(scope), args=[self._window_us, user]))
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc

    async def count(self, scope: str) -> int:
        try:
            return int(await self._count(keys=self._keys(scope), args=[self._window_us]))
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc

    async def succeeded(self, scope: str) -> None:
        try:
            await self._succeeded(keys=self._keys(scope)[1:], args=[self._window_us])
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc


def _redis_down(exc: BaseException) -> MxConnectionError:
    return MxConnectionError(f"MX health tally: Redis unavailable ({exc.__class__.__name__})")


class CredentialHealth:
    """Applies the rule on top of a :class:`RefusalTally`. One per client and event loop."""

    def __init__(
        self,
        tally: RefusalTally,
        *,
        threshold: int,
        hold: float = HOLD_SECONDS,
        confirm: float = CONFIRM_SECONDS,
        flush: float = SUCCESS_FLUSH_SECONDS,
    ) -> None:
        self._tally = tally
        self._threshold = threshold
        self._hold = hold
        self._confirm = confirm
        self._flush = flush
        self._last_write: dict[str, float] = {}
        self._last_refusal: dict[str, float] = {}
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def refused(self, scope: str, user: str) -> bool:
        """Record that MX refused ``user`` in ``scope``; True when that makes it client-wide.

        Waits (at most the hold, plus the confirmation) for the other calls in flight: returns
        False early when a success comes in, True once the threshold has held long enough.

        Raises:
            MxConnectionError: the shared tally is unreachable.
        """
        loop = asyncio.get_running_loop()
        self._last_refusal[scope] = time.monotonic()
        count = await self._tally.refused(scope, user)
        deadline = loop.time() + self._hold
        reached_at: float | None = None
        while True:
            now = loop.time()
            if count >= self._threshold:
                reached_at = now if reached_at is None else reached_at
                if now - reached_at >= self._confirm:
                    return True
            else:
                reached_at = None
                if count == 0 or now >= deadline:
                    # 0: a success came after our refusal. Deadline: not enough users say so.
                    return False
            await asyncio.sleep(POLL_SECONDS)
            count = await self._tally.count(scope)

    async def succeeded(self, scope: str) -> None:
        """Record a success in ``scope``; never raises (a lost success only errs towards
        pausing later, and the call that succeeded must not fail because of it)."""
        now = time.monotonic()
        recent_refusal = now - self._last_refusal.get(scope, float("-inf")) < self._flush * 10
        if recent_refusal or now - self._last_write.get(scope, float("-inf")) >= self._flush:
            await self._write_success(scope)
        elif scope not in self._pending:
            # Throttled: write it once the flush interval is over, so no success is lost.
            delay = self._flush - (now - self._last_write[scope])
            loop = asyncio.get_running_loop()
            self._pending[scope] = loop.call_later(delay, self._flush_later, scope)

    def _flush_later(self, scope: str) -> None:
        self._pending.pop(scope, None)
        task = asyncio.get_running_loop().create_task(self._write_success(scope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_success(self, scope: str) -> None:
        self._last_write[scope] = time.monotonic()
        try:
            await self._tally.succeeded(scope)
        except MxConnectionError as exc:
            log.debug("mx.health_success_lost", scope=scope, error=str(exc))

    async def aclose(self) -> None:
        """Write pending successes and stop timers (before the loop or Redis closes)."""
        for scope, handle in list(self._pending.items()):
            handle.cancel()
            await self._write_success(scope)
        self._pending.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
