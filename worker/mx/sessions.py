"""Nexus sessions per MX user: a shared cache with MX's sliding expiry and single-flight creation.

A Nexus session belongs to one user (its API token was read for that user) and lives 30 minutes,
restarted by every call. The cache keeps each session ``30 min - REAUTH_MX_SESSION_MARGIN`` and
slides that expiry on every read (Redis ``GETEX``), so we drop a session before MX does. Reading
slides a little *before* MX does (MX slides when the call lands), which only errs on the safe
side; if MX expires a session anyway, the client's 401/4011 path drops it and makes a new one.

Creation is single-flight at two levels, because every creation costs two MX requests and many
members of one user are usually due together:

* in process, concurrent callers for one user share one creation task;
* across processes, the creator holds a Redis lock (``SET NX PX``, released by compare-and-delete)
  and the others poll the cache until the session appears or the lock frees up.

Keys: ``reauth:mx:session:<client id>:<user>`` (the token) and
``reauth:mx:session-lock:<client id>:<user>``. Without Redis, :class:`MemorySessionStore`
keeps the same contract in one process, timed by the injected clock.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from worker import waits
from worker.errors import MxConnectionError, MxTimeout

log = structlog.get_logger(__name__)

#: MX's sliding session lifetime.
NEXUS_SESSION_TTL = timedelta(minutes=30)
#: Prefix of cached session keys (the value is the session token).
SESSION_KEY_PREFIX = "reauth:mx:session:"
#: Prefix of the cross-process creation locks.
LOCK_KEY_PREFIX = "reauth:mx:session-lock:"
#: How often a process waiting for another one's session polls the cache.
LOCK_POLL_SECONDS = 0.02
#: How long a process reuses a token it read from the shared store without asking again. Saves
#: one Redis round trip per MX call; a token replaced meanwhile by another process costs at most
#: one 401/4011, which drops the local copy and reads the new token.
LOCAL_TTL_SECONDS = 5.0

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SessionStore(Protocol):
    """Where session tokens live. Every method may raise :class:`MxConnectionError`."""

    async def get(self, user: str) -> str | None:
        """The cached token, sliding its expiry; ``None`` when absent or expired."""
        ...

    async def put(self, user: str, token: str) -> None: ...

    async def drop(self, user: str, token: str) -> None:
        """Forget ``token`` unless another caller already replaced it."""
        ...

    async def try_lock(self, user: str, owner: str, ttl: timedelta) -> bool: ...

    async def unlock(self, user: str, owner: str) -> None: ...


class MemorySessionStore:
    """In-process store (no Redis configured). Locks always succeed: one process, one flight."""

    def __init__(self, ttl: timedelta, clock: Callable[[], datetime]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._tokens: dict[str, tuple[str, datetime]] = {}

    async def get(self, user: str) -> str | None:
        entry = self._tokens.get(user)
        now = self._clock()
        if entry is None or entry[1] <= now:
            self._tokens.pop(user, None)
            return None
        self._tokens[user] = (entry[0], now + self._ttl)
        return entry[0]

    async def put(self, user: str, token: str) -> None:
        self._tokens[user] = (token, self._clock() + self._ttl)

    async def drop(self, user: str, token: str) -> None:
        entry = self._tokens.get(user)
        if entry is not None and entry[0] == token:
            del self._tokens[user]

    async def try_lock(self, user: str, owner: str, ttl: timedelta) -> bool:
        return True

    async def unlock(self, user: str, owner: str) -> None:
        return None


class RedisSessionStore:
    """Sessions shared by every worker through Redis."""

    def __init__(self, redis: aioredis.Redis, ttl: timedelta, *, namespace: str) -> None:
        self._redis = redis
        self._ttl_ms = max(1, int(ttl.total_seconds() * 1000))
        self._namespace = namespace
        self._release = redis.register_script(_RELEASE_LUA)

    def _key(self, user: str) -> str:
        return f"{SESSION_KEY_PREFIX}{self._namespace}:{user}"

    def _lock_key(self, user: str) -> str:
        return f"{LOCK_KEY_PREFIX}{self._namespace}:{user}"

    async def get(self, user: str) -> str | None:
        try:
            raw = await self._redis.getex(self._key(user), px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc
        return _text(raw)

    async def put(self, user: str, token: str) -> None:
        try:
            await self._redis.set(self._key(user), token, px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc

    async def drop(self, user: str, token: str) -> None:
        try:
            await self._release(keys=[self._key(user)], args=[token])
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc

    async def try_lock(self, user: str, owner: str, ttl: timedelta) -> bool:
        ms = max(1, int(ttl.total_seconds() * 1000))
        try:
            return bool(await self._redis.set(self._lock_key(user), owner, nx=True, px=ms))
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc

    async def unlock(self, user: str, owner: str) -> None:
        try:
            await self._release(keys=[self._lock_key(user)], args=[owner])
        except (RedisError, OSError) as exc:
            raise _redis_down(exc) from exc


def _text(raw: object) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _redis_down(exc: BaseException) -> MxConnectionError:
    return MxConnectionError(f"Nexus session cache: Redis unavailable ({exc.__class__.__name__})")


class SessionManager:
    """Single-flight access to one session per user on top of a :class:`SessionStore`."""

    def __init__(self, store: SessionStore, *, lock_ttl: timedelta) -> None:
        self._store = store
        self._lock_ttl = lock_ttl
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._local: dict[str, tuple[str, float]] = {}

    async def token_for(self, user: str, create: Callable[[], Awaitable[str]]) -> str:
        """The user's session token, creating one (once, across tasks and processes) if needed.

        Raises:
            MxError: creating the session failed (every waiter gets the creator's error).
        """
        now = time.monotonic()
        local = self._local.get(user)
        if local is not None and local[1] > now:
            return local[0]
        token = await self._store.get(user)
        if token is not None:
            self._local[user] = (token, now + LOCAL_TTL_SECONDS)
            return token
        task = self._inflight.get(user)
        if task is None:
            task = asyncio.ensure_future(self._create_shared(user, create))
            self._inflight[user] = task
            task.add_done_callback(lambda t: self._finished(user, t))
        # shield: one waiter being cancelled must not cancel the creation the others wait for.
        if waits.FILE is None:
            token = await asyncio.shield(task)
        else:
            t0 = time.perf_counter()  # the benchmark's wait timings (bench.waits)
            try:
                token = await asyncio.shield(task)
            finally:
                waits.note("session", time.perf_counter() - t0)
        # The caller's next request for this user (after MxClient.admit) reads it locally.
        self._local[user] = (token, time.monotonic() + LOCAL_TTL_SECONDS)
        return token

    def _finished(self, user: str, task: asyncio.Task[str]) -> None:
        if self._inflight.get(user) is task:
            del self._inflight[user]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters may all have been cancelled

    async def drop(self, user: str, token: str) -> None:
        local = self._local.get(user)
        if local is not None and local[0] == token:
            del self._local[user]
        await self._store.drop(user, token)

    async def _create_shared(self, user: str, create: Callable[[], Awaitable[str]]) -> str:
        owner = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        # A crashed lock holder frees the lock after lock_ttl; waiting a bit longer than that
        # means we always get a turn ourselves before giving up.
        deadline = loop.time() + self._lock_ttl.total_seconds() * 1.5
        t0 = time.perf_counter()
        while True:
            if await self._store.try_lock(user, owner, self._lock_ttl):
                if waits.FILE is not None:  # the benchmark's wait timings (bench.waits)
                    waits.note("session_lock", time.perf_counter() - t0)
                try:
                    token = await self._store.get(user)  # made while we waited for the lock?
                    if token is None:
                        token = await create()
                        await self._store.put(user, token)
                        log.debug("mx.session_created", mx_user=user)
                    return token
                finally:
                    await self._store.unlock(user, owner)
            await asyncio.sleep(LOCK_POLL_SECONDS)
            token = await self._store.get(user)
            if token is not None:
                return token
            if loop.time() > deadline:
                raise MxTimeout("timed out waiting for another worker to create a Nexus session")
