"""Alembic migration scripts (date-prefixed files in ``versions/``)."""
