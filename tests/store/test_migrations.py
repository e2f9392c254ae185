"""Migrations: round trip on both databases, and the models agree with the migrations."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

import models
from worker.store import migrate
from worker.store.db import make_engine


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, models.Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_round_trip_upgrade_downgrade_upgrade(db_url: str) -> None:
    """head → base drops every table; base → head recreates them all."""
    expected = set(models.Base.metadata.tables)
    assert _tables(db_url) == expected
    migrate.downgrade(db_url, "base")
    assert _tables(db_url) == set()
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert _tables(db_url) == expected


def test_models_match_migrations(db_url: str) -> None:
    """Autogenerate against a migrated database finds nothing to add, drop or alter."""
    assert _diff(db_url) == []


def test_due_index_is_partial_on_postgres(pg_url: str) -> None:
    """The due-members index only holds members with a due time, so it grows with due work."""
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            indexdef = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_members_due'"
            ).scalar_one()
    finally:
        engine.dispose()
    assert "WHERE (next_attempt_at IS NOT NULL)" in indexdef
    assert "INCLUDE (claim_expires_at)" in indexdef
