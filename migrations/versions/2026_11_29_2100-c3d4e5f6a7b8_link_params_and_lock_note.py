"""Outbox rows keep what their link was generated with; lock rows get a note for people;
scan runs say whether they were interrupted.

Revision ID: c3d4e5f6a7b8
Revises: b7c1d2e3f4a5
Create Date: 2026-11-29 21:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3d4e5f6a7b8"
down_revision: str | None = "b7c1d2e3f4a5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("link_params", sa.JSON(), nullable=True))
    with op.batch_alter_table("locks") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    with op.batch_alter_table("scan_runs") as batch:
        batch.add_column(
            sa.Column("interrupted", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("scan_runs") as batch:
        batch.drop_column("interrupted")
    with op.batch_alter_table("locks") as batch:
        batch.drop_column("note")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("link_params")
