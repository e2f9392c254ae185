"""Leases: the one claim mechanism for members (scan, rerun, batches), outbox rows (relay) and
webhook inbox rows (the apply job).

A lease is a pair of columns, ``claim_owner`` and ``claim_expires_at``. A row is free when it has
no owner or its lease ran out, so a worker that dies leaves rows that become claimable again when
the lease expires; a live worker renews its lease (heartbeat) for as long as it works.

On PostgreSQL the claim is one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)
RETURNING``, so concurrent claimers take disjoint rows and never wait on each other. SQLite has no
row locks; there every unit of work starts with ``BEGIN IMMEDIATE`` (see :mod:`worker.store.db`),
which makes the database a single writer and the claim exclusive.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, or_, select, update
from sqlalchemy.orm import Session

from models import Member, Notification, WebhookEvent
from worker import waits
from worker.store import bulk

#: The tables that carry lease columns.
Leased = type[Member] | type[Notification] | type[WebhookEvent]


def new_owner() -> str:
    """A claim token: unique per batch, so a stale worker can never write over a new claim."""
    return uuid.uuid4().hex


def is_free(model: Leased, now: datetime) -> ColumnElement[bool]:
    """Rows nobody holds a live lease on.

    Only ``claim_expires_at`` is read (every release clears both columns), so PostgreSQL can
    answer from the due index, which carries that column.
    """
    return or_(model.claim_expires_at.is_(None), model.claim_expires_at <= now)


def claim(
    session: Session,
    model: Leased,
    *,
    where: ColumnElement[bool],
    order_by: Sequence[Any],
    owner: str,
    until: datetime,
    limit: int,
    returning: Sequence[Any],
) -> Sequence[Row[Any]]:
    """Lease up to ``limit`` rows matching ``where`` (in ``order_by`` order) to ``owner``.

    ``where`` must include :func:`is_free` (or an equivalent the caller's index serves).

    Returns the ``returning`` columns of the rows taken, in no particular order.
    """
    inner = select(model.id).where(where).order_by(*order_by).limit(limit)
    # Rendered on PostgreSQL only; SQLite's BEGIN IMMEDIATE already makes us the one writer.
    inner = inner.with_for_update(skip_locked=True)
    stmt = (
        update(model)
        .where(model.id.in_(inner.scalar_subquery()))
        .values(claim_owner=owner, claim_expires_at=until)
        .returning(*returning)
        .execution_options(synchronize_session=False)
    )
    if waits.FILE is None:
        return session.execute(stmt).all()
    t0 = time.perf_counter()  # the benchmark's wait timings (bench.waits)
    rows = session.execute(stmt).all()
    waits.note(f"claim:{model.__tablename__}", time.perf_counter() - t0)
    return rows


def held(session: Session, model: Leased, ids: Iterable[Any], owner: str) -> set[Any]:
    """Which of ``ids`` ``owner`` still holds, locked until the transaction ends (PostgreSQL)."""
    ids = list(ids)
    if not ids:
        return set()
    stmt = select(model.id).where(bulk.one_of(session, model.id, ids), model.claim_owner == owner)
    return set(session.scalars(stmt.with_for_update()))


def _update_held(
    session: Session, model: Leased, ids: Iterable[Any], owner: str, values: dict[str, Any]
) -> int:
    """Set ``values`` on the rows of ``ids`` that ``owner`` holds; returns how many."""
    ids = list(ids)
    if not ids:
        return 0
    result = session.execute(
        update(model)
        .where(bulk.one_of(session, model.id, ids), model.claim_owner == owner)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def renew(
    session: Session, model: Leased, ids: Iterable[Any], owner: str, *, until: datetime
) -> int:
    """Extend ``owner``'s leases on ``ids`` (a heartbeat); returns how many it still holds."""
    return _update_held(session, model, ids, owner, {"claim_expires_at": until})


def release(session: Session, model: Leased, ids: Iterable[Any], owner: str, **values: Any) -> int:
    """Give ``owner``'s leases on ``ids`` back, setting ``values`` on the way."""
    return _update_held(
        session, model, ids, owner, {"claim_owner": None, "claim_expires_at": None, **values}
    )


@contextmanager
def heartbeat(beat: Callable[[], object], every: timedelta) -> Iterator[None]:
    """Call ``beat`` every ``every`` on a background thread for as long as the block runs.

    ``beat`` renews a live batch's leases in a short transaction of its own (see :func:`renew`)
    and handles its own errors. A thread, not a task on the batch's event loop, because the
    relay's sinks block; the thread dies with its process, so a killed worker's leases run out
    one lease after its last beat. Leaving the block waits for a beat in progress to finish.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every.total_seconds()):
            beat()

    thread = threading.Thread(target=loop, name="lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
