"""Fixtures for the MX client and sandbox tests.

``mx_env`` runs each contract case twice: against the sandbox served by uvicorn over real
loopback HTTP with the Redis session cache and rate limiter, and against the *same* sandbox app
injected as an ``httpx.ASGITransport`` (no network, in-process sessions). Each environment gets
its own MX client id, so Redis keys never collide with other tests sharing the Redis database.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mx_helpers import MxEnv, asgi_env

from worker.sandbox.app import Sandbox
from worker.sandbox.server import running_sandbox


@pytest.fixture(params=["loopback", "asgi"])
def mx_env(request: pytest.FixtureRequest) -> Iterator[MxEnv]:
    """The sandbox over loopback HTTP + Redis, or injected as an ASGI transport."""
    if request.param == "loopback":
        redis_url = request.getfixturevalue("redis_url")
        with running_sandbox() as served:
            env = MxEnv("loopback", served.sandbox, served.base_url, redis_url, None)
            env.config.client_id = env.client_id
            yield env
    else:
        sandbox = Sandbox()
        yield asgi_env(sandbox)
        sandbox.close()


@pytest.fixture
def served(redis_url: str) -> Iterator[MxEnv]:
    """Loopback only (connection resets, cross-process behaviour, raw HTTP checks)."""
    with running_sandbox() as running:
        env = MxEnv("loopback", running.sandbox, running.base_url, redis_url, None)
        env.config.client_id = env.client_id
        yield env
