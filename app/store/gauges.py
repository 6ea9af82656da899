"""What the operator gauges read from the database: one cheap snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import TextualSelect, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.delivery_status import OPEN_STATUSES
from app.store.database import Database
from app.store.parking import PARKED_IDS
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


# The counts and the oldest pending delivery in one pass over the unfinished
# deliveries (each row read once, not once per figure).
_BY_SUBSCRIPTION = text(
    """
    SELECT subscription_id, status, count(*) AS n,
           min(CASE WHEN status = 'pending' THEN created_at END) AS oldest
    FROM deliveries
    WHERE status IN ('pending', 'in_flight', 'dead')
    GROUP BY subscription_id, status
    """
).columns(oldest=UTCDateTime())


def _oldest_due(hint: str) -> TextualSelect:
    # The claim index in its own order, stopping at the first delivery of an
    # active subscription with its circuit closed: one entry read when the
    # oldest due delivery is claimable (``min()`` over the join read every
    # claimable row). SQLite, which keeps no statistics here, picks the status
    # index and reads the whole backlog unless told. A resumed subscription's
    # parked backlog (app/store/parking.py), which the claims take from its own
    # index, counts by its oldest delivery: one probe per subscription with
    # parked deliveries (none, nearly always).
    sendable = (
        "s.status = 'active' AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= :now)"
    )
    closed = "s.status = 'active' AND s.circuit_open_until IS NULL"  # half-open: the probe only
    return (
        text(
            f"""
    WITH RECURSIVE {PARKED_IDS}
    SELECT min(due) AS due FROM (
        SELECT due FROM (
            SELECT d.next_attempt_at AS due
            FROM deliveries d {hint} JOIN subscriptions s ON s.id = d.subscription_id
            WHERE d.status = 'pending' AND d.ready AND d.next_attempt_at <= :now AND {sendable}
            ORDER BY d.next_attempt_at
            LIMIT 1) AS claimable
        UNION ALL
        SELECT (SELECT p.next_attempt_at FROM deliveries p
                WHERE p.parked AND p.subscription_id = s.id ORDER BY p.seq LIMIT 1)
        FROM parked JOIN subscriptions s ON s.id = parked.id
        WHERE {closed}
    ) AS first_due
    """
        )
        .bindparams(bindparam("now", type_=UTCDateTime()))
        .columns(due=UTCDateTime())
    )


_OLDEST_DUE = {
    "sqlite": _oldest_due("INDEXED BY ix_deliveries_claim"),
    "postgresql": _oldest_due(""),
}
# The refresh is background work: on PostgreSQL its scan of the backlog runs
# in its own backend only, not with parallel workers that would take every
# core from the API and the worker for its duration.
_NO_PARALLEL = text("SET LOCAL max_parallel_workers_per_gather = 0")
_SUBSCRIPTIONS = text(
    "SELECT id, tenant_id, status, consecutive_failures, circuit_open_until FROM subscriptions"
).columns(circuit_open_until=UTCDateTime())


async def oldest_due(db: Database) -> datetime | None:
    """When the longest-waiting delivery a worker could claim now became due
    (what ``eventrelay_delivery_lag_seconds`` is measured from)."""
    async with db.read() as conn:
        due = await _read_oldest_due(conn)
    return stored_utc(due)


async def _read_oldest_due(conn: AsyncConnection) -> datetime | None:
    statement = _OLDEST_DUE[conn.dialect.name]
    return (await conn.execute(statement, {"now": datetime.now(UTC)})).scalar()


async def snapshot(db: Database) -> Snapshot:
    async with db.read() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(_NO_PARALLEL)
        per_subscription: dict[tuple[str, str], int] = {}
        oldest: datetime | None = None
        for sid, status, count, first in await conn.execute(_BY_SUBSCRIPTION):
            per_subscription[(sid, status)] = int(count)
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        due = await _read_oldest_due(conn)
        subscriptions = [SubscriptionHealth(*r) for r in await conn.execute(_SUBSCRIPTIONS)]
    totals: dict[str, int] = dict.fromkeys(OPEN_STATUSES, 0)
    for (_, status), count in per_subscription.items():
        totals[status] += count
    return Snapshot(totals, per_subscription, oldest, due, subscriptions)
