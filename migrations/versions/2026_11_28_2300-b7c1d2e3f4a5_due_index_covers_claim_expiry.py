"""The due index carries claim_expires_at (PostgreSQL INCLUDE) for index-only due scans.

Revision ID: b7c1d2e3f4a5
Revises: 581e41b65e78
Create Date: 2026-11-28 23:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7c1d2e3f4a5"
down_revision: str | None = "581e41b65e78"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = sa.text("next_attempt_at IS NOT NULL")


def upgrade() -> None:
    # SQLite has no INCLUDE: the index stays as it was there.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_members_due", table_name="members", postgresql_where=WHERE)
    op.create_index(
        "ix_members_due",
        "members",
        ["next_attempt_at", "id"],
        postgresql_include=["claim_expires_at"],
        postgresql_where=WHERE,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_members_due", table_name="members", postgresql_where=WHERE)
    op.create_index("ix_members_due", "members", ["next_attempt_at", "id"], postgresql_where=WHERE)
