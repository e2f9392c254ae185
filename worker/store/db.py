"""Engine and unit-of-work helpers: the one place that opens connections and commits.

Repositories never commit; :func:`session_scope` commits once at the end of a unit of work or
rolls back on error. SQLAlchemy connection errors are translated into :class:`StorageError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    NoSuchModuleError,
)
from sqlalchemy.orm import Session, sessionmaker

from worker.errors import ConfigError, StorageError


def make_engine(
    url: str, *, ping_idle_after: float | None = None, pool_size: int | None = None, **kwargs: Any
) -> Engine:
    """Create an engine for ``url`` with the settings this service relies on.

    SQLite gets a busy timeout and WAL so the embedded default tolerates a CLI next to a worker;
    PostgreSQL gets ``pool_pre_ping`` so a connection killed under us is replaced, not reused.
    With ``ping_idle_after`` (seconds), only a connection that sat idle in the pool longer than
    that is pinged (see :func:`_ping_when_idle`): for ``reauth serve``, whose requests are one
    short statement or transaction each, where a ping per checkout is a round trip per request.
    ``pool_size`` (PostgreSQL): connections kept open, SQLAlchemy's default (5) when None.
    """
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                # Let SQLAlchemy, not pysqlite, decide when a transaction begins, so that
                # BEGIN IMMEDIATE (below) really takes the write lock up front.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            @event.listens_for(engine, "begin")
            def _sqlite_begin(conn: Any) -> None:
                # One writer at a time: every unit of work takes the write lock when it starts,
                # which is how claims stay exclusive on a database without row locks. Readers
                # that say so (dry runs) take no write lock.
                read_only = conn.get_execution_options().get("read_only", False)
                conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

            return engine
        if pool_size is not None:
            kwargs["pool_size"] = pool_size
        # psycopg encodes and decodes the JSON columns (outbox payloads) with orjson: the relay
        # reads every payload it delivers, and the standard library's decoder was ~3% of the
        # worker tree's CPU. (SQLite keeps SQLAlchemy's own str-based JSON processing.)
        kwargs.setdefault("json_serializer", orjson.dumps)
        kwargs.setdefault("json_deserializer", orjson.loads)
        if ping_idle_after is None:
            return create_engine(url, pool_pre_ping=True, **kwargs)
        engine = create_engine(url, **kwargs)
        _ping_when_idle(engine, ping_idle_after)
        return engine
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"REAUTH_DATABASE_URL: cannot use this URL: {exc}") from None


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Pessimistic disconnect handling for connections that sat idle (SQLAlchemy's documented
    checkout-event recipe): a connection back from the pool after more than ``idle_s`` is
    pinged, and a dead one is replaced before use. A connection in steady use is not pinged; if
    the server drops it between two uses, that one statement fails, SQLAlchemy invalidates the
    pool's connections at once (so the next checkouts connect afresh) and the caller gets a
    StorageError (the reconnect page's read retries once, see store.clicks.link_facts)."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= idle_s:
            return  # new, or used a moment ago
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as exc:  # the driver's own errors: the connection is gone
            raise DisconnectionError(f"pooled connection dead: {type(exc).__name__}") from exc


#: What PostgreSQL and SQLite say when a table is missing: the schema is not migrated.
_NOT_MIGRATED = ("no such table", "does not exist", "undefinedtable")


def storage_error(exc: DBAPIError) -> StorageError:
    """The one translation of a database failure: what failed, and what to do when obvious."""
    detail = str(exc.orig or exc).strip().splitlines()[0] if (exc.orig or exc) else ""
    if any(marker in detail.lower() for marker in _NOT_MIGRATED):
        return StorageError(
            f"database is not migrated ({detail}); run `reauth db upgrade` (REAUTH_DATABASE_URL)"
        )
    if exc.connection_invalidated or "connect" in detail.lower():
        return StorageError(f"database unreachable (REAUTH_DATABASE_URL): {detail}")
    return StorageError(f"database error: {detail}")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except IntegrityError:
        # A constraint the caller relies on (unique keys): theirs to handle, not an outage.
        session.rollback()
        raise
    except DBAPIError as exc:
        session.rollback()
        raise storage_error(exc) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_only_session(engine: Engine) -> Iterator[Session]:
    """A session that only reads and never commits.

    On SQLite its transaction is a deferred ``BEGIN``, so a long read (a dry run) never holds
    the write lock that workers need.
    """
    with engine.connect().execution_options(read_only=True) as conn:
        session = Session(bind=conn)
        try:
            yield session
        finally:
            session.close()
            conn.rollback()
