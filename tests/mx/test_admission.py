"""Admission ahead of the in-flight cap (worker/mx/client.py ``admit``, worker/mx/ratelimit.py
``Permit``, worker/service/regenerate.py ``call_all``).

Pinned: a call's rate-limit slot is reserved before it takes an in-flight slot and used by its
request without asking the limiter again while fresh; a stale permit is not used (a new slot is
taken, so no request starts long after its slot); callers arriving together share one Redis
round trip for their slots, spaced one interval apart; and a call waiting for its user's Nexus
session leaves the in-flight gate to a call that is ready.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import redis.asyncio as aioredis
from mx_helpers import MxEnv, asgi_env, browser, run

from worker.mx.ratelimit import KEY_PREFIX, PERMIT_GRACE, Permit, RedisRateLimiter
from worker.sandbox.app import Sandbox
from worker.service.regenerate import call_all


class _Counting:
    """Wraps a limiter; counts permits (before the cap) and slots taken inside the cap."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.acquired = 0
        self.permits = 0

    async def permit(self) -> Permit:
        self.permits += 1
        result: Permit = await self.inner.permit()
        return result

    async def acquire(self) -> float:
        self.acquired += 1
        result: float = await self.inner.acquire()
        return result


def _asgi_env() -> tuple[MxEnv, Sandbox]:
    sandbox = Sandbox()
    return asgi_env(sandbox), sandbox


def test_a_fresh_permit_is_the_requests_slot_and_a_stale_one_is_not() -> None:
    env, sandbox = _asgi_env()

    async def go() -> tuple[int, int, tuple[int, int]]:
        async with env.client() as mx:
            first = await mx.admit(browser("MBR-0"))  # builds the loop state; makes the session
            state = mx._loop_state()
            counting = _Counting(state.limiter)
            state.limiter = counting
            await mx.generate_oauth_window_uri(browser("MBR-0"), permit=first)
            fresh = counting.acquired
            permit = await mx.admit(browser("MBR-1"))
            permit.at -= PERMIT_GRACE + 1.0  # as if it waited a second for the cap
            await mx.generate_oauth_window_uri(browser("MBR-1"), permit=permit)
            stale = counting.acquired - fresh
            permits = counting.permits
            await mx.generate_oauth_window_uri(browser("MBR-2"))  # takes its own, before the cap
            none = (counting.permits - permits, counting.acquired - fresh - stale)
            return fresh, stale, none

    try:
        assert run(go()) == (0, 1, (1, 0))
    finally:
        sandbox.close()


def test_permit_waits_for_a_future_slot_and_refuses_an_old_one() -> None:
    async def go() -> tuple[bool, float, bool]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        used = await Permit(t0 + 0.1).use(loop)
        waited = loop.time() - t0
        old = await Permit(loop.time() - PERMIT_GRACE - 0.01).use(loop)
        return used, waited, old

    used, waited, old = run(go())
    assert used is True
    assert waited >= 0.09
    assert old is False


def test_permits_asked_together_share_one_round_trip(redis_url: str) -> None:
    """Fifty callers in one loop iteration: one script call, fifty slots one interval apart."""

    async def go() -> tuple[int, list[float]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            limiter = RedisRateLimiter(client, 1000.0, key=f"{KEY_PREFIX}permits", max_wait=2.0)
            await client.delete(f"{KEY_PREFIX}permits")
            calls = 0
            reserve = limiter.reserve

            async def counted(n: int = 1) -> tuple[int, float]:
                nonlocal calls
                calls += 1
                return await reserve(n)

            limiter.reserve = counted  # type: ignore[method-assign]
            permits = await asyncio.gather(*(limiter.permit() for _ in range(50)))
            return calls, [p.at for p in permits]
        finally:
            await client.aclose()

    calls, slots = run(go())
    assert calls == 1
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(abs(g - 0.001) < 1e-6 for g in gaps)


class _SlowSso(httpx.AsyncBaseTransport):
    """The sandbox, with one user's SSO token answered 0.3 s late."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._inner = httpx.ASGITransport(app=sandbox)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "USR-SLOW" in request.url.path:
            await asyncio.sleep(0.3)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_a_call_waiting_for_its_session_leaves_the_gate_to_a_ready_call() -> None:
    """A gate of one call; the first call's user needs a slow session. The second call (its
    user's session is quick) goes through the gate meanwhile instead of queueing behind it."""
    sandbox = Sandbox()
    env = asgi_env(sandbox, _SlowSso(sandbox))

    async def go() -> list[Any]:
        async with env.client(mx_max_concurrency=4) as mx:
            requests = [browser("MBR-S", "USR-SLOW"), browser("MBR-F", "USR-FAST")]
            return await call_all(mx, requests, 1)

    try:
        slow, fast = run(go())
    finally:
        sandbox.close()
    assert slow.window is not None
    assert fast.window is not None
    assert slow.latency_ms >= 300
    assert fast.latency_ms < 250


def test_a_configuration_error_stops_a_batch_larger_than_the_gate() -> None:
    """Wrong credentials, 40 members of 40 users, a gate of 4: admission is bounded (two gates'
    worth of calls admitted ahead), so the batch stops after a few refused session creations
    instead of making every user's session first; the rest are skipped."""
    env, sandbox = _asgi_env()

    async def go() -> list[Any]:
        async with env.client(mx_api="nexus", mx_api_key="wrong-key") as mx:
            requests = [browser(f"MBR-{i}", f"USR-{i}") for i in range(40)]
            return await call_all(mx, requests, 4)

    try:
        results = run(go())
        sent = len(env.requests())
    finally:
        sandbox.close()
    skipped = sum(1 for r in results if r.skipped)
    refused = [r for r in results if r.error is not None]
    assert skipped >= 40 - 2 * 4, (skipped, sent)
    assert refused
    assert sent <= 2 * 2 * 4, sent  # at most a window of calls, two requests each


def test_a_batch_larger_than_the_gate_reserves_slots_one_wave_ahead_only() -> None:
    """100 calls through a gate of 10 at 200 ms a call: slots are reserved at most one wave
    ahead (the window: admitted or in flight, two gates' worth), so no permit grows stale
    waiting for the gate and no slot is reserved twice."""
    env, sandbox = _asgi_env()
    sandbox.config.latency = 0.2

    async def go() -> tuple[int, int, int]:
        async with env.client(mx_api="platform") as mx:
            await mx.admit(browser("MBR-W"))  # builds the loop state
            state = mx._loop_state()
            counting = _Counting(state.limiter)
            state.limiter = counting
            requests = [browser(f"MBR-{i}") for i in range(100)]
            results = await call_all(mx, requests, 10)
            return sum(1 for r in results if r.window), counting.permits, counting.acquired

    try:
        ok, permits, acquired = run(go())
    finally:
        sandbox.close()
    assert ok == 100
    assert permits == 100
    assert acquired == 0  # no stale permit replaced inside the cap
