"""tenants: every row belongs to one; what existed before belongs to ``default``

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT = sa.text("'default'")
DEAD = sa.text("status = 'dead'")


def _tenant_id() -> sa.Column[str]:
    # ADD COLUMN with a constant default: no table rewrite on PostgreSQL (11+),
    # a plain ALTER TABLE on SQLite.
    return sa.Column("tenant_id", sa.String(length=64), server_default=DEFAULT, nullable=False)


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("ingest_rate_per_second", sa.Float(), nullable=True),
        sa.Column("max_subscriptions", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    now = datetime.now(UTC)
    # SQLite keeps UTC without an offset.
    stamp = now.replace(tzinfo=None) if op.get_context().dialect.name == "sqlite" else now
    op.bulk_insert(
        tenants,
        [
            {
                "id": "default",
                "name": "Default",
                "metadata": "{}",
                "status": "active",
                "created_at": stamp,
                "updated_at": stamp,
            }
        ],
    )

    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(length=64), nullable=True))

    with op.batch_alter_table("events") as batch:
        batch.add_column(_tenant_id())
    op.drop_index("ix_events_type_seq", table_name="events")
    op.drop_index("ix_events_key_seq", table_name="events")
    op.create_index("ix_events_tenant_id_seq", "events", ["tenant_id", "seq"])
    op.create_index("ix_events_tenant_id_type_seq", "events", ["tenant_id", "type", "seq"])
    op.create_index("ix_events_tenant_id_key_seq", "events", ["tenant_id", "key", "seq"])

    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(_tenant_id())
    op.create_index("ix_subscriptions_tenant_id_id", "subscriptions", ["tenant_id", "id"])

    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(_tenant_id())
    op.drop_index("ix_deliveries_dead_type", table_name="deliveries")
    op.create_index(
        "ix_deliveries_dead_tenant",
        "deliveries",
        ["tenant_id", "seq"],
        postgresql_where=DEAD,
        sqlite_where=DEAD,
    )
    op.create_index(
        "ix_deliveries_dead_type",
        "deliveries",
        ["tenant_id", "event_type", "seq"],
        postgresql_where=DEAD,
        sqlite_where=DEAD,
    )

    # The primary key becomes (tenant_id, key): SQLite rebuilds the table.
    with op.batch_alter_table("idempotency_keys", recreate="auto") as batch:
        batch.add_column(
            sa.Column("tenant_id", sa.String(length=64), server_default=DEFAULT, nullable=False)
        )
        batch.drop_constraint("pk_idempotency_keys", type_="primary")
        batch.create_primary_key("pk_idempotency_keys", ["tenant_id", "key"])


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", recreate="auto") as batch:
        batch.drop_constraint("pk_idempotency_keys", type_="primary")
        batch.create_primary_key("pk_idempotency_keys", ["key"])
        batch.drop_column("tenant_id")
    op.drop_index("ix_deliveries_dead_type", table_name="deliveries")
    op.drop_index("ix_deliveries_dead_tenant", table_name="deliveries")
    op.create_index(
        "ix_deliveries_dead_type",
        "deliveries",
        ["event_type", "seq"],
        postgresql_where=DEAD,
        sqlite_where=DEAD,
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("tenant_id")
    op.drop_index("ix_subscriptions_tenant_id_id", table_name="subscriptions")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("tenant_id")
    op.drop_index("ix_events_tenant_id_key_seq", table_name="events")
    op.drop_index("ix_events_tenant_id_type_seq", table_name="events")
    op.drop_index("ix_events_tenant_id_seq", table_name="events")
    op.create_index("ix_events_type_seq", "events", ["type", "seq"])
    op.create_index("ix_events_key_seq", "events", ["key", "seq"])
    with op.batch_alter_table("events") as batch:
        batch.drop_column("tenant_id")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("tenant_id")
    op.drop_table("tenants")
