"""Pruning: succeeded deliveries, finished events and expired idempotency keys.

Each statement deletes a small batch in its own short transaction, so ingest
(on SQLite, the one writer) waits at most one batch. An event stays while any
of its deliveries is pending, in flight or dead; dead letters stay until they
are redriven or discarded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.database import Database
from app.store.schema import UTCDateTime

BATCH = 500
PRUNE_LOCK = 0x65767072756E65  # one pruner at a time on PostgreSQL


def _sql(statement: str) -> TextClause:
    return text(statement).bindparams(bindparam("cutoff", type_=UTCDateTime()), bindparam("batch"))


_SUCCEEDED = _sql(
    """
    DELETE FROM deliveries WHERE seq IN (
        SELECT seq FROM deliveries
        WHERE status = 'succeeded' AND completed_at < :cutoff
        LIMIT :batch)
    """
)

_EVENTS = _sql(
    """
    DELETE FROM events WHERE seq IN (
        SELECT ev.seq FROM events ev
        WHERE ev.received_at < :cutoff
          AND NOT EXISTS (
            SELECT 1 FROM deliveries d
            WHERE d.event_id = ev.id
              AND (d.status IN ('pending', 'in_flight', 'dead')
                   OR (d.status = 'succeeded' AND d.completed_at >= :cutoff)))
        LIMIT :batch)
    """
)

_KEYS = _sql(
    """
    DELETE FROM idempotency_keys WHERE key IN (
        SELECT key FROM idempotency_keys WHERE created_at < :cutoff LIMIT :batch)
    """
)


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int
    events: int
    idempotency_keys: int


async def prune(
    db: Database, *, cutoff: datetime, keys_cutoff: datetime, batch: int = BATCH
) -> Pruned:
    return Pruned(
        deliveries=await _drain(db, _SUCCEEDED, cutoff, batch),
        events=await _drain(db, _EVENTS, cutoff, batch),
        idempotency_keys=await _drain(db, _KEYS, keys_cutoff, batch),
    )


async def _drain(db: Database, statement: TextClause, cutoff: datetime, batch: int) -> int:
    total = 0
    while True:
        async with db.write() as conn:
            if db.dialect == "postgresql" and not await _try_lock(conn):
                return total
            result = await conn.execute(statement, {"cutoff": cutoff, "batch": batch})
        deleted = int(result.rowcount)
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0.01)  # let waiting writers in between batches


async def _try_lock(conn: AsyncConnection) -> bool:
    result = await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({PRUNE_LOCK})"))
    return bool(result.scalar())
