"""destinations: a subscription delivers to a webhook or a message broker

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Added columns only (no table rebuild on SQLite): existing rows are webhooks.
    op.add_column("subscriptions", sa.Column("destination", sa.Text(), nullable=True))
    op.add_column("subscriptions", sa.Column("destination_url", sa.Text(), nullable=True))
    op.add_column(
        "subscriptions",
        sa.Column(
            "format", sa.String(length=16), nullable=False, server_default=sa.text("'eventrelay'")
        ),
    )


def downgrade() -> None:
    raise RuntimeError("eventrelay migrations are forward-only")
