"""``make_engine(ping_idle_after=...)`` (the engine of ``reauth serve``): a pooled PostgreSQL
connection is pinged only after it sat idle, a dead one is replaced before use, and the
reconnect page's read survives its connection being killed between two requests."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from worker.store import clicks
from worker.store.db import make_engine

pytestmark = pytest.mark.postgres


def _kill_pooled(pg_url: str, pid: int) -> None:
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    finally:
        admin.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_in_steady_use_is_not_pinged(pg_url: str) -> None:
    engine = make_engine(pg_url, ping_idle_after=60.0)
    try:
        pid = _backend_pid(engine)
        assert _backend_pid(engine) == pid  # the same pooled connection, reused
        _kill_pooled(pg_url, pid)
        # Used a moment ago, so not pinged: the statement itself meets the dead connection
        # (with a ping per checkout it would have been replaced first, as below).
        with pytest.raises(DBAPIError) as failed, engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert failed.value.connection_invalidated
        assert _backend_pid(engine) != pid  # the pool connected afresh
    finally:
        engine.dispose()


def test_an_idle_dead_connection_is_replaced_before_use(pg_url: str) -> None:
    engine = make_engine(pg_url, ping_idle_after=0.05)
    try:
        pid = _backend_pid(engine)
        _kill_pooled(pg_url, pid)
        time.sleep(0.2)  # longer than ping_idle_after: the next checkout pings
        assert _backend_pid(engine) != pid  # answered, on a fresh connection
    finally:
        engine.dispose()


def test_the_page_read_retries_once_on_a_connection_killed_while_in_use(pg_url: str) -> None:
    engine = make_engine(pg_url, ping_idle_after=3600.0)  # never pinged in this test
    try:
        pid = _backend_pid(engine)
        _kill_pooled(pg_url, pid)
        # Not pinged (used a moment ago): the read fails on the dead connection, the pool is
        # invalidated, and the read is repeated once on a fresh one. No such link: None.
        assert clicks.link_facts(engine, uuid.uuid4(), datetime.now(UTC)) is None
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()


def test_every_checkout_pings_by_default(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        pid = _backend_pid(engine)
        _kill_pooled(pg_url, pid)
        assert _backend_pid(engine) != pid  # pool_pre_ping: replaced without an error
    finally:
        engine.dispose()


def test_concurrent_checkouts_up_to_pool_size_reuse_their_connections(pg_url: str) -> None:
    # reauth serve sizes its pool to its database threads (web.app.DB_THREADS): with fewer
    # pooled connections than concurrent checkouts, the overflow ones were closed on return and
    # opened again on the next burst (a PostgreSQL process started per ~8 pages under load).
    engine = make_engine(pg_url, ping_idle_after=60.0, pool_size=8)
    try:
        seen: list[set[int]] = []
        for _ in range(2):
            conns = [engine.connect() for _ in range(8)]
            seen.append(
                {int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in conns}
            )
            for c in conns:
                c.close()
        assert len(seen[0]) == 8
        assert seen[1] == seen[0]  # the same eight server processes: none closed, none opened
    finally:
        engine.dispose()
