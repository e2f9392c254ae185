"""Fixtures of the reliability scenarios."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from worker.store.db import make_engine


@pytest.fixture
def engines() -> Iterator[Callable[[str], Engine]]:
    """``engines(url)``: an engine disposed at teardown, even when the scenario fails (a
    leaked connection would surface as a ResourceWarning in a later, innocent test)."""
    made: list[Engine] = []

    def make(url: str) -> Engine:
        made.append(make_engine(url))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A Redis for this scenario alone (broker, stream, session cache, rate limiter).

    A private ``redis-server`` on a free loopback port, so that another test run flushing the
    shared test database (db 15) cannot drop this scenario's queued messages or stream; the
    shared test Redis when no ``redis-server`` binary is installed.
    """
    from tests.reliability.reliability_helpers import RedisServer, free_port

    if shutil.which("redis-server") is None:
        yield str(request.getfixturevalue("redis_url"))
        return
    server = RedisServer(free_port(), tmp_path / "redis-private.log")
    server.start()
    try:
        yield server.url
    finally:
        server.close()
