"""Parking: a held subscription's due deliveries out of the claim index.

A paused, disabled or circuit-open subscription (*held*) may have a long due
backlog: a dead receiver's circuit stays open while events keep coming. Every
claim's oldest walk (:mod:`app.store.claims`) passed those deliveries in the
claim index without taking any, about 0.19 ms a claim per 1,000 of them, for
every tenant. The worker's parking job (:class:`app.worker.retention.ParkingJob`)
parks them: ``ready`` cleared and ``parked`` set, so they leave the claim
index, and the claims take them again, from their own index, once their
subscription may be sent to again.

- :func:`sweep` walks the due part of the claim index in its own order, a
  chunk at a time from a cursor, and parks the held subscriptions' deliveries
  it finds there: those are the ones a claim would pass. What becomes due later,
  or is readied again (a line's next head, a redrive), is met by a later sweep.
- :func:`parked_subscriptions` lists the subscriptions that have parked
  deliveries (one probe of the partial index per subscription) with their
  state. Once one is active with its circuit closed, the worker's claims take
  its parked deliveries directly (the parked walk of :mod:`app.store.claims`),
  as the worker has room for them: the claim's lease clears ``parked`` in the
  write it makes anyway, so a resumed backlog costs no second write to ready it.
  While its circuit is half-open, :func:`unpark` readies one, for the probe the
  circuit needs.

``ready`` stays a hint: the claim still checks the subscription's status and
circuit, and the ``NOT EXISTS`` keeps each line's order. Only ``pending``
deliveries are parked; the writes skip rows another transaction holds
(PostgreSQL) or that stopped being what was read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import text

from app.store import driver
from app.store.claims import SQLITE_CLAIM_HINT, timed_sql
from app.store.database import Database
from app.store.schema import UTCDateTime, sqlite_timestamp, stored_utc

# A subscription whose deliveries may not be sent now (circuit half-open is not
# held: it needs one delivery to probe with).
_HELD = "(s.status <> 'active' OR s.circuit_open_until > :now)"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a sweep goes on from in the claim index's order."""

    next_attempt_at: datetime
    seq: int


@dataclass(frozen=True, slots=True)
class Swept:
    parked: int  # deliveries parked
    seen: int  # due deliveries walked
    cursor: Cursor | None  # where the next sweep goes on; None: from the start


def _sweep_sql(hint: str) -> str:
    return f"""
    SELECT d.seq, d.next_attempt_at, {_HELD} AS held
    FROM deliveries d {hint}
    JOIN subscriptions s ON s.id = d.subscription_id
    WHERE d.status = 'pending' AND d.ready AND d.next_attempt_at <= :now
      AND (d.next_attempt_at > :after_at OR (d.next_attempt_at = :after_at AND d.seq > :after_seq))
    ORDER BY d.next_attempt_at, d.seq
    LIMIT :limit
"""


_SWEEP_SQLITE = text(_sweep_sql(SQLITE_CLAIM_HINT)).columns(next_attempt_at=UTCDateTime())
_SWEEP_PG = timed_sql(_sweep_sql(""), ("now", "after_at")).columns(next_attempt_at=UTCDateTime())

_STILL_HELD = f"""status = 'pending' AND ready AND EXISTS (
        SELECT 1 FROM subscriptions s WHERE s.id = deliveries.subscription_id AND {_HELD})"""
_PARK_SQLITE = f"""
    UPDATE deliveries SET ready = FALSE, parked = TRUE
    WHERE seq IN (SELECT value FROM json_each(:seqs)) AND {_STILL_HELD}
"""
_PARK_PG = timed_sql(
    f"""
    UPDATE deliveries SET ready = FALSE, parked = TRUE
    WHERE seq = ANY(ARRAY(
        SELECT seq FROM deliveries
        WHERE seq = ANY(CAST(:seqs AS BIGINT[])) AND status = 'pending' AND ready
        FOR UPDATE SKIP LOCKED))
      AND {_STILL_HELD}
""",
    ("now",),
)

# The earliest moment the claim index holds, for a sweep from the start.
_BEGINNING = Cursor(datetime.fromisoformat("1970-01-01T00:00:00+00:00"), 0)


async def sweep(db: Database, cursor: Cursor | None, now: datetime, limit: int) -> Swept:
    """Walk up to ``limit`` due deliveries of the claim index after ``cursor``
    and park those of held subscriptions."""
    after = cursor or _BEGINNING
    params = {"now": now, "after_at": after.next_attempt_at, "after_seq": after.seq}
    params["limit"] = limit
    async with db.read() as conn:
        if db.is_sqlite:
            raw = {**params, "now": sqlite_timestamp(now)}
            raw["after_at"] = sqlite_timestamp(after.next_attempt_at)
            rows = (await conn.execute(_SWEEP_SQLITE, raw)).all()
        else:
            rows = (await conn.execute(_SWEEP_PG, params)).all()
    held = [int(r[0]) for r in rows if r[2]]
    parked = await _park(db, held, now) if held else 0
    if len(rows) < limit:
        return Swept(parked, len(rows), None)
    last = rows[-1]
    at = stored_utc(last[1])
    assert at is not None
    return Swept(parked, len(rows), Cursor(at, int(last[0])))


async def _park(db: Database, seqs: Sequence[int], now: datetime) -> int:
    if db.sqlite_writer is not None:
        params = {"seqs": orjson.dumps(list(seqs)).decode(), "now": sqlite_timestamp(now)}

        def park(conn: sqlite3.Connection) -> int:
            return int(conn.execute(_PARK_SQLITE, params).rowcount)

        return await driver.sqlite_write(db, park)
    async with db.write() as conn:
        result = await conn.execute(_PARK_PG, {"seqs": list(seqs), "now": now})
        return int(result.rowcount)


_ANY_HELD_SQL = f"SELECT 1 FROM subscriptions s WHERE {_HELD} LIMIT 1"
_ANY_HELD, _ANY_HELD_PG = text(_ANY_HELD_SQL), timed_sql(_ANY_HELD_SQL, ("now",))


async def any_held(db: Database, now: datetime) -> bool:
    """Whether any subscription is held (else there is nothing to sweep for)."""
    async with db.read() as conn:
        if db.is_sqlite:
            found = await conn.scalar(_ANY_HELD, {"now": sqlite_timestamp(now)})
        else:
            found = await conn.scalar(_ANY_HELD_PG, {"now": now})
    return found is not None


@dataclass(frozen=True, slots=True)
class ParkedSubscription:
    id: str
    status: str
    circuit_open_until: datetime | None

    def held(self, now: datetime) -> bool:
        open_until = self.circuit_open_until
        return self.status != "active" or (open_until is not None and open_until > now)

    def half_open(self, now: datetime) -> bool:
        """Active, its circuit's cool-down over but not closed yet (a probe is due)."""
        return self.circuit_open_until is not None and not self.held(now)


# The subscriptions with parked deliveries, one probe of the partial index each
# (a loose index scan: neither database skips through an index by itself).
PARKED_IDS = """parked(id) AS (
        SELECT min(subscription_id) FROM deliveries WHERE parked
        UNION ALL
        SELECT (SELECT min(d.subscription_id) FROM deliveries d
                WHERE d.parked AND d.subscription_id > parked.id)
        FROM parked WHERE parked.id IS NOT NULL
    )"""
_PARKED_SUBSCRIPTIONS = text(f"""
    WITH RECURSIVE {PARKED_IDS}
    SELECT s.id, s.status, s.circuit_open_until
    FROM parked JOIN subscriptions s ON s.id = parked.id
""").columns(circuit_open_until=UTCDateTime())


async def parked_subscriptions(db: Database) -> list[ParkedSubscription]:
    async with db.read() as conn:
        rows = (await conn.execute(_PARKED_SUBSCRIPTIONS)).all()
    return [ParkedSubscription(r[0], r[1], stored_utc(r[2])) for r in rows]


_READY_AGAIN = "parked = FALSE, ready = CASE WHEN status = 'pending' THEN TRUE ELSE ready END"
_UNPARK_SQLITE = f"""
    UPDATE deliveries SET {_READY_AGAIN}
    WHERE seq IN (
        SELECT seq FROM deliveries WHERE parked AND subscription_id = :sub ORDER BY seq LIMIT :n)
"""
_UNPARK_PG = text(f"""
    UPDATE deliveries SET {_READY_AGAIN}
    WHERE seq = ANY(ARRAY(
        SELECT seq FROM deliveries WHERE parked AND subscription_id = :sub
        ORDER BY seq LIMIT :n FOR UPDATE SKIP LOCKED))
""")


async def unpark(db: Database, subscription_id: str, limit: int) -> int:
    """Ready again up to ``limit`` of the subscription's parked deliveries,
    oldest first; how many."""
    params: dict[str, object] = {"sub": subscription_id, "n": limit}
    if db.sqlite_writer is not None:

        def ready_again(conn: sqlite3.Connection) -> int:
            return int(conn.execute(_UNPARK_SQLITE, params).rowcount)

        return await driver.sqlite_write(db, ready_again)
    async with db.write() as conn:
        result = await conn.execute(_UNPARK_PG, params)
        return int(result.rowcount)
