"""trace context: each event's traceparent and tracestate

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without defaults: a catalogue change on both databases,
    # no table rewrite. Events stored before have no trace context; their
    # attempts start a trace each.
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(length=55), nullable=True))
        batch.add_column(sa.Column("tracestate", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("tracestate")
        batch.drop_column("traceparent")
