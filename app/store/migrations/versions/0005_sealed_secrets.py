"""signing secrets as text: room for their sealed form

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A sealed secret (app/domain/sealing.py) is longer than the 128 characters
    # a plaintext one needed. PostgreSQL changes the type in place (varchar to
    # text rewrites nothing); SQLite copies the table (foreign keys are not
    # enforced on the migration's connection, so nothing cascades).
    with op.batch_alter_table("subscriptions") as batch:
        for column, nullable in (("secret", False), ("previous_secret", True)):
            batch.alter_column(
                column,
                existing_type=sa.String(length=128),
                existing_nullable=nullable,
                type_=sa.Text(),
            )


def downgrade() -> None:
    raise RuntimeError("eventrelay migrations are forward-only")
