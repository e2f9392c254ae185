"""Singletons: the scan lock and the fleet-wide MX pause (the ``locks`` table and PostgreSQL
advisory locks).

The scan lock is a PostgreSQL advisory lock held on its own connection, which frees itself when
that connection dies; SQLite has none, so there it is a lease row that a crashed scan leaves
behind for at most :data:`SCAN_LOCK_LEASE`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from models import Lock
from worker.store.db import storage_error

#: pg advisory lock key of the scan (any fixed 64-bit number; this is crc32("reauth.scan")).
SCAN_LOCK_KEY = 0x5EA7_5CA9
SCAN_LOCK_NAME = "reauth.scan"
#: The SQLite lease lock outlives a crashed scan by at most this long.
SCAN_LOCK_LEASE = timedelta(minutes=10)
#: Name of the lock row that pauses all MX calls after a configuration error.
MX_PAUSE = "mx.paused"


@contextmanager
def scan_lock(engine: Engine, *, now: datetime, owner: str) -> Iterator[bool]:
    """Yield True when this process holds the scan singleton lock, False when another does."""
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                got = bool(
                    conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": SCAN_LOCK_KEY}
                    ).scalar()
                )
                conn.commit()
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCAN_LOCK_KEY})
                        conn.commit()
            return
        got = _take_lease_row(engine, now=now, owner=owner)
        try:
            yield got
        finally:
            if got:
                with engine.begin() as conn:
                    conn.execute(
                        delete(Lock).where(Lock.name == SCAN_LOCK_NAME, Lock.owner == owner)
                    )
    except DBAPIError as exc:
        raise storage_error(exc) from exc


def _take_lease_row(engine: Engine, *, now: datetime, owner: str) -> bool:
    with engine.begin() as conn:
        taken = conn.execute(
            update(Lock)
            .where(Lock.name == SCAN_LOCK_NAME, Lock.expires_at < now)
            .values(owner=owner, expires_at=now + SCAN_LOCK_LEASE)
        ).rowcount
        if taken:
            return True
        if conn.execute(select(Lock.name).where(Lock.name == SCAN_LOCK_NAME)).first():
            return False
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(Lock).values(
                        name=SCAN_LOCK_NAME, owner=owner, expires_at=now + SCAN_LOCK_LEASE
                    )
                )
        except IntegrityError:
            return False
        return True


def pause_mx(session: Session, *, until: datetime, why: str) -> None:
    """Stop every worker from calling MX until ``until`` (credentials or request shape broken)."""
    row = session.get(Lock, MX_PAUSE)
    if row is None:
        session.add(Lock(name=MX_PAUSE, owner="reauth", expires_at=until, note=why))
    else:
        row.note = why
        row.expires_at = max(row.expires_at, until)


def mx_paused(session: Session, now: datetime) -> str | None:
    """Why MX calls are paused right now, or None."""
    pause = mx_pause(session, now)
    return None if pause is None else pause[0]


def mx_pause(session: Session, now: datetime) -> tuple[str, datetime] | None:
    """(why, until) when MX calls are paused right now, or None."""
    row = session.get(Lock, MX_PAUSE)
    if row is None or row.expires_at <= now:
        return None
    return row.note or "paused", row.expires_at


def lift_mx_pause(session: Session) -> str | None:
    """End the fleet-wide MX pause now; the note of the pause lifted, or None if there was none."""
    row = session.get(Lock, MX_PAUSE)
    if row is None:
        return None
    note = row.note or "paused"
    session.delete(row)
    return note
