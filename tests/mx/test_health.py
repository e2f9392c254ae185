"""The fleet-wide credential rule (worker/mx/health.py): N distinct users within a window, with
no success in between, in process and shared through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from mx_helpers import run

from worker.mx.health import CredentialHealth, MemoryTally, RedisTally, RefusalTally

Factory = Callable[[timedelta], AbstractAsyncContextManager[RefusalTally]]


@pytest.fixture(params=["memory", "redis"])
def tally_factory(request: pytest.FixtureRequest) -> Factory:
    """Builds a tally on the running loop: in process, or on the test Redis."""
    if request.param == "memory":

        @asynccontextmanager
        async def memory(window: timedelta) -> AsyncIterator[RefusalTally]:
            yield MemoryTally(window)

        return memory
    url = request.getfixturevalue("redis_url")

    @asynccontextmanager
    async def shared(window: timedelta) -> AsyncIterator[RefusalTally]:
        client = aioredis.Redis.from_url(url)
        try:
            yield RedisTally(client, window, namespace="health-test")
        finally:
            await client.aclose()

    return shared


def in_tally(
    factory: Factory, window: timedelta, body: Callable[[RefusalTally], Awaitable[Any]]
) -> Any:
    async def go() -> Any:
        async with factory(window) as tally:
            return await body(tally)

    return run(go())


def test_counts_distinct_users_and_a_success_resets(tally_factory: Factory) -> None:
    """The same user twice counts once; a success forgets every refusal before it."""

    async def body(t: RefusalTally) -> list[int]:
        counts = [await t.refused("sso", "u1"), await t.refused("sso", "u1")]
        counts.append(await t.refused("sso", "u2"))
        counts.append(await t.count("platform"))  # scopes are separate
        await asyncio.sleep(0.002)
        await t.succeeded("sso")
        counts.append(await t.count("sso"))
        await asyncio.sleep(0.002)
        counts.append(await t.refused("sso", "u3"))
        return counts

    assert in_tally(tally_factory, timedelta(minutes=1), body) == [1, 1, 2, 0, 0, 1]


def test_refusals_older_than_the_window_do_not_count(tally_factory: Factory) -> None:
    """Only refusals within REAUTH_MX_CREDENTIAL_FAILURE_WINDOW count."""

    async def body(t: RefusalTally) -> list[int]:
        first = await t.refused("sso", "u1")
        await asyncio.sleep(0.25)
        return [first, await t.refused("sso", "u2"), await t.count("sso")]

    assert in_tally(tally_factory, timedelta(seconds=0.2), body) == [1, 1, 1]


def test_one_user_alone_never_trips_the_rule(tally_factory: Factory) -> None:
    """However often one user is refused, it stays that user's problem."""

    async def body(t: RefusalTally) -> list[bool]:
        health = CredentialHealth(t, threshold=2, hold=0.05, confirm=0.05)
        return [await health.refused("sso", "u1") for _ in range(3)]

    assert in_tally(tally_factory, timedelta(minutes=1), body) == [False, False, False]


def test_concurrent_refusals_of_enough_users_are_all_client_wide(
    tally_factory: Factory,
) -> None:
    """Three users refused together with a threshold of three: every one of them (the first
    two waited for the verdict) is told the problem is client-wide."""

    async def body(t: RefusalTally) -> list[bool]:
        health = CredentialHealth(t, threshold=3, hold=0.5, confirm=0.05)
        return list(await asyncio.gather(*(health.refused("platform", f"u{i}") for i in range(3))))

    assert in_tally(tally_factory, timedelta(minutes=1), body) == [True, True, True]


def test_a_success_while_holding_ends_the_wait_as_per_user(
    tally_factory: Factory,
) -> None:
    """A refusal waiting for its verdict returns "one user's problem" as soon as another call
    succeeds, without waiting out the hold."""

    async def body(t: RefusalTally) -> tuple[bool, float]:
        health = CredentialHealth(t, threshold=3, hold=5.0, confirm=0.05)
        started = time.monotonic()
        waiting = asyncio.ensure_future(health.refused("sso", "u1"))
        await asyncio.sleep(0.1)
        await health.succeeded("sso")
        verdict = await waiting
        await health.aclose()
        return verdict, time.monotonic() - started

    verdict, took = in_tally(tally_factory, timedelta(minutes=1), body)
    assert verdict is False
    assert took < 1.0


def test_two_processes_share_the_tally_through_redis(redis_url: str) -> None:
    """Refusals recorded by different workers (separate clients and health objects) add up, and
    a success written by one clears the others' count."""

    async def go() -> list[int | bool]:
        a, b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
        try:
            ta = RedisTally(a, timedelta(minutes=1), namespace="shared")
            tb = RedisTally(b, timedelta(minutes=1), namespace="shared")
            ha = CredentialHealth(ta, threshold=2, hold=0.5, confirm=0.05)
            hb = CredentialHealth(tb, threshold=2, hold=0.5, confirm=0.05)
            both = await asyncio.gather(ha.refused("sso", "u1"), hb.refused("sso", "u2"))
            await asyncio.sleep(0.01)
            await hb.succeeded("sso")
            out: list[int | bool] = [*both, await ta.count("sso")]
            await ha.aclose()
            await hb.aclose()
            return out
        finally:
            await a.aclose()
            await b.aclose()

    assert run(go()) == [True, True, 0]


def test_throttled_successes_are_still_written(tally_factory: Factory) -> None:
    """Successes are written at most every flush interval; one that was skipped is written
    once the interval is over, so "no success in between" is never missed."""

    async def body(t: RefusalTally) -> list[int]:
        health = CredentialHealth(t, threshold=9, hold=0.01, confirm=0.01, flush=0.2)
        await health.succeeded("nexus")  # written now
        await asyncio.sleep(0.01)
        await t.refused("nexus", "u1")  # another worker's refusal, after that success
        await asyncio.sleep(0.01)
        await health.succeeded("nexus")  # throttled: flushed at the end of the interval
        before = await t.count("nexus")
        await asyncio.sleep(0.3)
        after = await t.count("nexus")
        await health.aclose()
        return [before, after]

    assert in_tally(tally_factory, timedelta(minutes=1), body) == [1, 0]
