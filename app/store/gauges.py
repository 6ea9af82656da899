"""What the operator gauges read from the database: one cheap snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, text

from app.domain.delivery_status import OPEN_STATUSES
from app.store.database import Database
from app.store.schema import UTCDateTime, stored_utc


@dataclass(frozen=True, slots=True)
class SubscriptionHealth:
    id: str
    tenant_id: str
    status: str
    consecutive_failures: int
    circuit_open_until: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    deliveries: dict[str, int]  # pending / in_flight / dead
    per_subscription: dict[tuple[str, str], int]
    oldest_pending: datetime | None
    oldest_due: datetime | None  # the longest-waiting delivery a worker could claim now
    subscriptions: list[SubscriptionHealth]


_BY_SUBSCRIPTION = text(
    """
    SELECT subscription_id, status, count(*) FROM deliveries
    WHERE status IN ('pending', 'in_flight', 'dead')
    GROUP BY subscription_id, status
    """
)
_OLDEST = text("SELECT min(created_at) AS oldest FROM deliveries WHERE status = 'pending'").columns(
    oldest=UTCDateTime()
)
_OLDEST_DUE = (
    text(
        """
    SELECT min(d.next_attempt_at) AS due
    FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
    WHERE d.status = 'pending' AND ready AND d.next_attempt_at <= :now
      AND s.status = 'active'
      AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= :now)
    """
    )
    .bindparams(bindparam("now", type_=UTCDateTime()))
    .columns(due=UTCDateTime())
)
_SUBSCRIPTIONS = text(
    "SELECT id, tenant_id, status, consecutive_failures, circuit_open_until FROM subscriptions"
).columns(circuit_open_until=UTCDateTime())


async def oldest_due(db: Database) -> datetime | None:
    """When the longest-waiting delivery a worker could claim now became due
    (what ``eventrelay_delivery_lag_seconds`` is measured from)."""
    async with db.read() as conn:
        due = (await conn.execute(_OLDEST_DUE, {"now": datetime.now(UTC)})).scalar()
    return stored_utc(due)


async def snapshot(db: Database) -> Snapshot:
    async with db.read() as conn:
        per_subscription = {(r[0], r[1]): int(r[2]) for r in await conn.execute(_BY_SUBSCRIPTION)}
        oldest = (await conn.execute(_OLDEST)).scalar()
        due = (await conn.execute(_OLDEST_DUE, {"now": datetime.now(UTC)})).scalar()
        subscriptions = [SubscriptionHealth(*r) for r in await conn.execute(_SUBSCRIPTIONS)]
    totals: dict[str, int] = dict.fromkeys(OPEN_STATUSES, 0)
    for (_, status), count in per_subscription.items():
        totals[status] += count
    return Snapshot(totals, per_subscription, oldest, due, subscriptions)
