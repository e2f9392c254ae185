"""Concurrency, shared state and event-loop lifecycle of the MX client, over loopback + Redis.

Pinned: single-flight Nexus session creation within a process *and* across processes (two
clients on two threads with their own loops and Redis pools stand in for two worker
processes), the global rate limit across clients, and that one client serves many batches on
a long-lived loop or lives inside one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from mx_helpers import MxEnv, browser, run

from worker.errors import MxError
from worker.mx import MxClient, OAuthWindow


async def spread(mx: MxClient, calls: int, users: int, offset: int = 0) -> list[OAuthWindow]:
    return await asyncio.gather(
        *(
            mx.generate_oauth_window_uri(browser(f"MBR-{offset + i}", f"USR-{i % users}"))
            for i in range(calls)
        )
    )


def in_threads(*jobs: Callable[[], Any]) -> list[Any]:
    """Run each job on its own thread (its own event loop), started together."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def worker(index: int, job: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = job()
        except BaseException as exc:  # re-raised on the test thread below
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i, j)) for i, j in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_200_concurrent_calls_over_20_users_create_exactly_20_sessions(served: MxEnv) -> None:
    """In one process: concurrent callers for one user share one session creation."""
    served.config.latency = 0.02  # keep many calls in flight while sessions are created

    async def go() -> list[OAuthWindow]:
        async with served.client(mx_max_concurrency=64) as mx:
            return await spread(mx, 200, 20)

    assert len(run(go())) == 200
    assert served.sessions_created() == 20
    sso = [r for r in served.requests() if r["endpoint"] == "sso"]
    assert len(sso) == 20


def test_two_processes_share_sessions_through_redis(served: MxEnv) -> None:
    """Across processes (own loop, own Redis pool, own single-flight map): still 20 sessions."""
    served.config.latency = 0.02

    def job(offset: int) -> int:
        async def go() -> int:
            async with served.client() as mx:
                return len(await spread(mx, 100, 20, offset))

        return run(go())

    assert in_threads(lambda: job(0), lambda: job(1000)) == [100, 100]
    assert served.sessions_created() == 20


def test_rate_limit_holds_across_clients(served: MxEnv) -> None:
    """Two clients sharing Redis at 40 req/s: the sandbox never sees more requests start in any
    one-second window than the limiter promises (``rate x (1 + PERMIT_GRACE) + 1``: a permit
    may be used up to PERMIT_GRACE after its slot, on a loaded loop; on an idle one it is 41),
    and the run is spread out accordingly."""
    from worker.mx.ratelimit import PERMIT_GRACE

    rate = 40.0

    def job(offset: int) -> int:
        async def go() -> int:
            async with served.client(mx_api="platform", mx_rate_limit_per_second=rate) as mx:
                return len(await spread(mx, 30, 5, offset))

        return run(go())

    assert in_threads(lambda: job(0), lambda: job(1000)) == [30, 30]
    times = sorted(r["time"] for r in served.requests())
    assert len(times) == 60
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= rate * (1 + PERMIT_GRACE) + 1
    assert times[-1] - times[0] >= (len(times) - 1) / rate * 0.9


def test_client_serves_many_batches_on_one_long_lived_loop(served: MxEnv) -> None:
    """asyncio.Runner.run per batch (the Celery worker's pattern) reuses connections and the
    session; aclose on the same runner releases everything (no ResourceWarning)."""
    client = served.client()
    with asyncio.Runner() as runner:
        for batch in range(3):
            runner.run(spread(client, 5, 1, batch * 10))
        runner.run(client.aclose())
    assert served.sessions_created() == 1


@pytest.mark.parametrize("redis", [True, False])
def test_client_can_live_inside_one_asyncio_run_and_be_reused_after_aclose(
    served: MxEnv, redis: bool
) -> None:
    """Created and closed inside asyncio.run, twice in a row, with and without Redis."""
    client = served.client(redis_url=served.redis_url if redis else None)

    async def batch() -> None:
        async with client:
            await client.generate_oauth_window_uri(browser())

    run(batch())
    run(batch())
    # Redis keeps the session across loops; the in-process cache is per loop state.
    assert served.sessions_created() == (1 if redis else 2)


def test_using_a_client_from_a_second_loop_without_aclose_is_refused(served: MxEnv) -> None:
    """A second loop cannot close the first loop's sockets: RuntimeError, a programming error."""
    client = served.client()
    with asyncio.Runner() as runner:
        runner.run(client.generate_oauth_window_uri(browser()))
        with pytest.raises(RuntimeError, match="event loop"):
            run(client.generate_oauth_window_uri(browser()))
        runner.run(client.aclose())


def test_connection_reset_is_a_connection_error(served: MxEnv) -> None:
    """The sandbox drops the TCP connection (RST) → MxConnectionError, a transient error."""
    from worker.errors import MxConnectionError

    served.config.rate_reset = 1.0

    async def go() -> None:
        async with served.client(mx_api="platform") as mx:
            await mx.generate_oauth_window_uri(browser())

    with pytest.raises(MxConnectionError):
        run(go())


def test_redis_down_is_a_transient_connection_error(served: MxEnv) -> None:
    """No Redis for the shared session cache / rate limit → MxConnectionError, not redis's."""

    async def go() -> None:
        async with served.client(redis_url="redis://127.0.0.1:1/0") as mx:
            await mx.generate_oauth_window_uri(browser())

    with pytest.raises(MxError, match="Redis unavailable"):
        run(go())


def test_prepare_builds_the_loop_state_without_a_request(served: MxEnv) -> None:
    """``prepare`` (a Celery pool process's start-up) builds the transport, limiter and
    session store on the runner's loop and sends nothing; the first batch then runs on them."""
    from worker.app import celery_app
    from worker.app.celery_app import _prepare_process

    client = served.client()
    with asyncio.Runner() as runner:
        runner.run(client.prepare())
        assert served.requests() == []
        with pytest.raises(RuntimeError):  # the state is bound to the runner's loop already
            asyncio.run(spread(client, 1, 1))
        runner.run(spread(client, 3, 1))
        runner.run(client.aclose())
    assert served.sessions_created() == 1
    receivers = [r[1]() for r in celery_app.signals.worker_process_init.receivers]
    assert _prepare_process in receivers
