"""Schema migrations through Alembic, driven from code so ``reauth db upgrade`` needs no ini file.

The migration scripts live in the top-level ``migrations/`` package; the URL always comes from
the caller (settings or a test), never from a file.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import OperationalError

from worker.errors import StorageError

#: The migrations folder beside the ``worker`` package (also inside an installed wheel).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option(
        "file_template",
        "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s",
    )
    cfg.set_main_option("timezone", "UTC")
    # Passed as an attribute, not an ini option, so '%' in passwords needs no escaping.
    cfg.attributes["database_url"] = database_url
    return cfg


def _run(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except OperationalError as exc:
        raise StorageError(f"cannot migrate the database: {exc.orig or exc}") from exc


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    _run(command.upgrade, alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Revert migrations down to ``revision``."""
    _run(command.downgrade, alembic_config(database_url), revision)


def current(database_url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    from worker.store.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise StorageError(f"cannot read the schema version: {exc.orig or exc}") from exc
    finally:
        engine.dispose()
