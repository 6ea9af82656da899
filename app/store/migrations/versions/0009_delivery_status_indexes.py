"""fewer index entries per delivery status change

Revision ID: 0009
Revises: 0008

Every status change of a delivery writes a new row version and, since its
status is indexed, an entry in each index whose key or predicate the new
version satisfies. Three of them are narrowed to the rows that need them:

* PostgreSQL: ``ix_deliveries_status_subscription_id`` keeps the unfinished
  deliveries only (what the gauges, the lease reaper and the events list's
  status filter read), so a finished delivery writes no entry there; the rare
  ``discarded`` rows get a small index of their own for that filter, on both
  databases (``succeeded`` has ``ix_deliveries_succeeded``). SQLite keeps the
  status index whole: it cannot match ``status = 'pending'`` to an IN-list
  predicate.
* ``ix_deliveries_lease`` is dropped: the reaper finds in-flight deliveries
  on the status index, and a lease renewal no longer touches an index
  (PostgreSQL can update the row in place, HOT).
* ``ix_deliveries_line`` leaves out deliveries without an ordering key, which
  belong to no line.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFINISHED = "status IN ('pending', 'in_flight', 'dead')"
LINED = f"{UNFINISHED} AND ordering_key IS NOT NULL"
DISCARDED = "status = 'discarded'"
IN_FLIGHT = "status = 'in_flight'"


def _partial(name: str, columns: list[str], where: str) -> None:
    predicate = sa.text(where)
    op.create_index(name, "deliveries", columns, postgresql_where=predicate, sqlite_where=predicate)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_deliveries_status_subscription_id", table_name="deliveries")
        _partial("ix_deliveries_status_subscription_id", ["status", "subscription_id"], UNFINISHED)
    _partial("ix_deliveries_discarded", ["event_id"], DISCARDED)
    op.drop_index("ix_deliveries_lease", table_name="deliveries")
    op.drop_index("ix_deliveries_line", table_name="deliveries")
    _partial("ix_deliveries_line", ["subscription_id", "ordering_key", "seq"], LINED)


def downgrade() -> None:
    op.drop_index("ix_deliveries_line", table_name="deliveries")
    _partial("ix_deliveries_line", ["subscription_id", "ordering_key", "seq"], UNFINISHED)
    _partial("ix_deliveries_lease", ["lease_expires_at"], IN_FLIGHT)
    op.drop_index("ix_deliveries_discarded", table_name="deliveries")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_deliveries_status_subscription_id", table_name="deliveries")
        op.create_index(
            "ix_deliveries_status_subscription_id", "deliveries", ["status", "subscription_id"]
        )
