"""Bulk INSERT and UPDATE by primary key: one statement per batch, whatever its size.

``session.execute(update(Model), rows)`` (the ORM's bulk UPDATE by primary key) is an
executemany: psycopg sends it in pipeline mode, but still as one UPDATE per row, each parsed,
bound and executed by the server and built by the client (it was ~15% of the worker tree's CPU;
bench/RESULTS.md, "Speed round two"). On PostgreSQL :func:`update_by_id` sends instead one
``UPDATE t SET c = v.c ... FROM unnest(:ids, :c, ...) AS v WHERE t.id = v.id`` per set of
columns, each column's values bound as one array: the SQL text is the same for every batch
(compiled once, cached), and the server plans it once. SQLite (in process, no round trips)
keeps the executemany. :func:`insert_rows` likewise sends one ``INSERT ... SELECT * FROM
unnest(...)`` (psycopg's executemany without RETURNING is also a statement per row).
Python-side column ``default`` and ``onupdate`` values (``created_at``, ``updated_at``) are
applied as the ORM applies them, computed once per batch. Never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, column, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert, Update

_STATEMENTS: dict[tuple[str, tuple[str, ...]], Update] = {}
_INSERTS: dict[tuple[str, tuple[str, ...]], Insert] = {}


def _unnest(table: Table, names: tuple[str, ...]) -> Any:
    """``unnest(:a_x::TYPE[], ...) AS v(x, ...)``: psycopg binds each column's values as one
    typed array (typed even when every value is NULL)."""
    arrays = [bindparam(f"a_{n}", type_=ARRAY(table.c[n].type)) for n in names]
    return (
        func.unnest(*arrays)
        .table_valued(*(column(n, table.c[n].type) for n in names))
        .render_derived(name="v")
    )


def _insert_statement(table: Table, keys: tuple[str, ...]) -> Insert:
    found = _INSERTS.get((table.name, keys))
    if found is None:
        v = _unnest(table, keys)
        found = insert(table).from_select(list(keys), select(*(v.c[k] for k in keys)))
        _INSERTS[(table.name, keys)] = found
    return found


def _defaults(table: Table, which: str) -> dict[str, Any]:
    """The table's Python-side ``default`` or ``onupdate`` values, computed once per batch."""
    out: dict[str, Any] = {}
    for c in table.columns:
        d = getattr(c, which)
        if d is None or c.primary_key:
            continue
        if getattr(d, "is_callable", False):
            out[c.name] = d.arg(None)
        elif getattr(d, "is_scalar", False):
            out[c.name] = d.arg
    return out


def _grouped(
    rows: Sequence[dict[str, Any]], extra: dict[str, Any], skip: str | None
) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        full = {**extra, **r} if extra else r
        groups.setdefault(tuple(sorted(k for k in full if k != skip)), []).append(full)
    return groups


def insert_rows(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts of column values) into ``model``'s table."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(model), list(rows))
        return
    table: Table = model.__table__
    for keys, group in _grouped(rows, _defaults(table, "default"), None).items():
        session.execute(_insert_statement(table, keys), _arrays(keys, group))


def _arrays(names: Sequence[str], group: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {f"a_{n}": [r[n] for r in group] for n in names}


def _statement(table: Table, keys: tuple[str, ...]) -> Update:
    """``UPDATE table SET k = v.k ... FROM unnest(...) AS v(id, k...) WHERE table.id = v.id``,
    one object per (table, columns), so SQLAlchemy's compiled cache is hit on every batch."""
    found = _STATEMENTS.get((table.name, keys))
    if found is not None:
        return found
    v = _unnest(table, ("id", *keys))
    stmt = (
        update(table)
        .where(table.c.id == v.c.id)
        .values({k: v.c[k] for k in keys})
        .execution_options(synchronize_session=False)
    )
    _STATEMENTS[(table.name, keys)] = stmt
    return stmt


def update_by_id(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (each a dict with ``id`` and the columns to set) to ``model``'s table."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        session.execute(update(model), list(rows))
        return
    table: Table = model.__table__
    # The last write of an id wins, as in the executemany (UPDATE ... FROM applies one).
    last = list({r["id"]: r for r in rows}.values())
    for keys, group in _grouped(last, _defaults(table, "onupdate"), "id").items():
        session.execute(_statement(table, keys), _arrays(("id", *keys), group))
