"""Bulk INSERT and UPDATE by primary key: one statement per batch, whatever its size.

``session.execute(update(Model), rows)`` (the ORM's bulk UPDATE by primary key) is an
executemany: psycopg sends it in pipeline mode, but still as one UPDATE per row, each parsed,
bound and executed by the server and built by the client (it was ~15% of the worker tree's CPU;
bench/RESULTS.md, "Speed round two"). On PostgreSQL :func:`update_by_id` sends instead one
``UPDATE t SET c = v.c ... FROM json_populate_recordset(NULL::t, :rows) AS v WHERE t.id = v.id``
per set of columns, and :func:`insert_rows` one ``INSERT INTO t (...) SELECT ... FROM
json_populate_recordset(...)``: the batch's rows go as **one JSON parameter** (encoded by orjson,
in C), and the server converts each value to its column's type (the table's row type). The SQL
text is constant per (table, columns): prepared once per connection. Binding each column as a
typed array to ``unnest`` (the previous form) made psycopg dump every value in Python (its array
dumper was ~6% of the worker tree's CPU). SQLite (in process, no round trips) keeps the
executemany. Python-side column ``default`` and ``onupdate`` values (``created_at``,
``updated_at``) are applied as the ORM applies them, computed once per batch; times must be
timezone-aware, as :class:`models.base.UTCDateTime` requires. Never commits.

:func:`one_of` is the batch's ``IN (ids)`` for the same reason: on PostgreSQL one array literal
parameter (``= ANY(CAST(:p AS type[]))``, constant SQL text) instead of a placeholder per id,
which psycopg parses anew each time (it caches no statement of more than 50 parameters).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    any_,
    bindparam,
    cast,
    insert,
    literal,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

_STATEMENTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], TextClause] = {}


def _rows_json(names: Sequence[str], group: Sequence[dict[str, Any]]) -> str:
    rows = [{n: r[n] for n in names} for r in group]
    # orjson writes a naive datetime without an offset (PostgreSQL would read it in the session's
    # time zone): refuse it, as models.base.UTCDateTime does on every other path. A loop here
    # costs a fifth of handing each datetime to a Python ``default``.
    for r in rows:
        for v in r.values():
            if isinstance(v, datetime) and v.tzinfo is None:
                raise ValueError(f"naive datetime {v!r}: pass timezone-aware UTC times")
    return orjson.dumps(rows).decode()


def _statement(
    dialect: Dialect, table: Table, kind: str, keys: tuple[str, ...], only: tuple[str, ...] = ()
) -> TextClause:
    """The constant SQL text of an INSERT or UPDATE of ``keys`` from the ``:rows`` JSON array,
    one object per (table, kind, columns) so SQLAlchemy's and psycopg's caches are hit. An
    UPDATE with ``only`` columns also requires ``t.c = :only_c`` and returns the ids written; an
    INSERT with ``only`` (unique columns) skips rows that would conflict on them and returns the
    ids inserted."""
    found = _STATEMENTS.get((table.name, kind, keys, only))
    if found is not None:
        return found
    q = dialect.identifier_preparer
    t = q.format_table(table)
    cols = [q.quote(k) for k in keys]
    rows = f"json_populate_recordset(NULL::{t}, CAST(:rows AS json)) AS v"
    if kind == "insert":
        sql = f"INSERT INTO {t} ({', '.join(cols)}) SELECT {', '.join(f'v.{c}' for c in cols)} "
        sql += f"FROM {rows}"
        if only:  # the unique columns: skip a row that would duplicate one
            sql += f" ON CONFLICT ({', '.join(q.quote(c) for c in only)}) DO NOTHING"
            sql += f" RETURNING {t}.id"
    else:
        sets = ", ".join(f"{c} = v.{c}" for c in cols)
        # Identifiers only, from the table's metadata, quoted by the dialect; values are bound.
        sql = f"UPDATE {t} SET {sets} FROM {rows} WHERE {t}.id = v.id"  # noqa: S608
        if only:
            sql += "".join(f" AND {t}.{q.quote(c)} = :only_{c}" for c in only)
            sql += f" RETURNING {t}.id"
    found = _STATEMENTS[(table.name, kind, keys, only)] = text(sql)
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
    # Rows built by the same code share their keys' order: group on that first (no sort per
    # row), then merge the groups whose sorted keys are equal.
    raw: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        full = {**extra, **r} if extra else r
        raw.setdefault(tuple(full), []).append(full)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for keys, group in raw.items():
        groups.setdefault(tuple(sorted(k for k in keys if k != skip)), []).extend(group)
    return groups


def insert_rows(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts of column values) into ``model``'s table."""
    if not rows:
        return
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        session.execute(insert(model), list(rows))
        return
    table: Table = model.__table__
    for keys, group in _grouped(rows, _defaults(table, "default"), None).items():
        stmt = _statement(bind.dialect, table, "insert", keys)
        session.execute(stmt, {"rows": _rows_json(keys, group)})


def update_by_id(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (each a dict with ``id`` and the columns to set) to ``model``'s table."""
    if not rows:
        return
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        session.execute(update(model), list(rows))
        return
    table: Table = model.__table__
    # The last write of an id wins, as in the executemany (UPDATE ... FROM applies one).
    last = list({r["id"]: r for r in rows}.values())
    for keys, group in _grouped(last, _defaults(table, "onupdate"), "id").items():
        stmt = _statement(bind.dialect, table, "update", keys)
        session.execute(stmt, {"rows": _rows_json(("id", *keys), group)})


def update_where(
    session: Session, model: Any, rows: Sequence[dict[str, Any]], only: dict[str, Any]
) -> list[Any]:
    """PostgreSQL only: like :func:`update_by_id` (same columns in every row, no ``onupdate``
    values added), on the rows whose ``only`` columns still hold those values; returns the ids
    written."""
    if not rows:
        return []
    bind = session.get_bind()
    table: Table = model.__table__
    keys = tuple(sorted(k for k in rows[0] if k != "id"))
    names = tuple(sorted(only))
    stmt = _statement(bind.dialect, table, "update", keys, names)
    params = {"rows": _rows_json(("id", *keys), rows), **{f"only_{c}": only[c] for c in names}}
    return list(session.scalars(stmt, params))


def insert_new(
    session: Session, model: Any, rows: Sequence[dict[str, Any]], unique: tuple[str, ...]
) -> int:
    """PostgreSQL only: like :func:`insert_rows`, skipping rows whose ``unique`` columns
    match an existing row (``ON CONFLICT DO NOTHING``); returns how many were inserted."""
    if not rows:
        return 0
    bind = session.get_bind()
    table: Table = model.__table__
    n = 0
    for keys, group in _grouped(rows, _defaults(table, "default"), None).items():
        stmt = _statement(bind.dialect, table, "insert", keys, unique)
        n += len(session.execute(stmt, {"rows": _rows_json(keys, group)}).all())
    return n


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_text(values: Sequence[Any]) -> str:
    """PostgreSQL's text form of an array of ints, UUIDs or strings (``{1,2}``), to bind as one
    parameter: psycopg would dump a list value by value in Python."""
    if values and isinstance(values[0], (int, uuid.UUID)):
        return "{" + ",".join(map(str, values)) + "}"
    return "{" + ",".join(map(_quoted, values)) + "}"


def any_of(column: Any, name: str) -> ColumnElement[bool]:
    """PostgreSQL: ``column = ANY(CAST(:name AS type[]))``, bound with :func:`array_text`; for
    statements built once."""
    clause: ColumnElement[bool] = column == any_(
        cast(bindparam(name, type_=String()), ARRAY(column.type))
    )
    return clause


def one_of(session: Session, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN (values)`` (ints, UUIDs or strings); on PostgreSQL as one array literal."""
    values = list(values)
    if session.get_bind().dialect.name != "postgresql" or not values:
        found: ColumnElement[bool] = column.in_(values)
        return found
    clause: ColumnElement[bool] = column == any_(
        cast(literal(array_text(values), String()), ARRAY(column.type))
    )
    return clause
