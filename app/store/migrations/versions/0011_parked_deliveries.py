"""parked deliveries: a held subscription's backlog out of the claim index

Revision ID: 0011
Revises: 0010

Every claim walked the due deliveries of paused, disabled and circuit-open
subscriptions in the claim index without taking any (about 0.19 ms a claim per
1,000 of them). The worker now parks them: ``ready`` cleared and ``parked``
set, so they leave the claim index, and restored when the subscription may be
sent to again (app/store/parking.py). The new column defaults to false (no row
is parked), which neither database rewrites the table for; the partial index
holds parked rows only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "deliveries",
        sa.Column("parked", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    op.create_index(
        "ix_deliveries_parked",
        "deliveries",
        ["subscription_id", "seq"],
        postgresql_where=sa.text("parked"),
        sqlite_where=sa.text("parked"),
    )


def downgrade() -> None:
    # What is parked goes back to the claim index first.
    op.execute(sa.text("UPDATE deliveries SET ready = true WHERE parked AND status = 'pending'"))
    op.drop_index("ix_deliveries_parked", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("parked")
