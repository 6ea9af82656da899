"""The dead-letter queue: browse, redrive, discard; the attempt history.

Every statement filters on the literal ``status = 'dead'`` so that both
databases use the partial ``ix_deliveries_dead*`` indexes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store import schema
from app.store.counts import capped_count
from app.store.database import Database
from app.store.lines import lines_moved_on

d = schema.deliveries
e = schema.events
a = schema.attempts
DEAD: ColumnElement[str] = literal_column("'dead'")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter: a delivery the DLQ holds, with its event's type and key."""

    seq: int
    id: str
    event_id: str
    subscription_id: str
    event_type: str
    key: str | None
    attempts: int
    last_status_code: int | None
    last_error: str | None
    dead_lettered_at: datetime | None


@dataclass(frozen=True, slots=True)
class Attempt:
    delivery_id: str
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_body: str | None
    request_headers: dict[str, str] | None  # None for attempts made before they were kept


def _dead_letters(tenant_id: str) -> Select[Any]:
    return (
        select(
            d.c.seq,
            d.c.id,
            d.c.event_id,
            d.c.subscription_id,
            d.c.event_type,
            e.c.key,
            d.c.attempts,
            d.c.last_status_code,
            d.c.last_error,
            d.c.dead_lettered_at,
        )
        .join(e, e.c.id == d.c.event_id)
        .where(d.c.status == DEAD, d.c.tenant_id == tenant_id)
    )


async def list_dead(
    db: Database,
    tenant_id: str,
    *,
    subscription_id: str | None,
    event_type: str | None,
    after_seq: int | None,
    limit: int,
) -> tuple[list[DeadLetter], int | None]:
    """The tenant's dead letters in the order they were created (oldest first), a
    page at a time."""
    query = _dead_letters(tenant_id)
    if subscription_id is not None:
        query = query.where(d.c.subscription_id == subscription_id)
    if event_type is not None:
        query = query.where(d.c.event_type == event_type)
    if after_seq is not None:
        query = query.where(d.c.seq > after_seq)
    query = query.order_by(d.c.seq).limit(limit + 1)
    async with db.read() as conn:
        page = [DeadLetter(*r) for r in await conn.execute(query)]
    if len(page) > limit:
        return page[:limit], page[limit - 1].seq
    return page, None


async def get_dead(db: Database, tenant_id: str, delivery_id: str) -> DeadLetter | None:
    async with db.read() as conn:
        row = (await conn.execute(_dead_letters(tenant_id).where(d.c.id == delivery_id))).first()
    return DeadLetter(*row) if row else None


async def attempts_of_delivery(db: Database, delivery_id: str) -> list[Attempt]:
    return await _attempts(db, a.c.delivery_id == delivery_id)


async def attempts_of_event(db: Database, event_id: str) -> list[Attempt]:
    # The event's deliveries first, then their attempts by delivery ID: joined
    # in one statement, a planner that misjudges the deliveries' count (stale
    # statistics) hashes the whole attempts table instead of probing its index.
    async with db.read() as conn:
        ids = [r[0] for r in await conn.execute(select(d.c.id).where(d.c.event_id == event_id))]
    return await _attempts(db, a.c.delivery_id.in_(ids)) if ids else []


async def _attempts(db: Database, condition: Any) -> list[Attempt]:
    query = (
        select(
            a.c.delivery_id,
            a.c.attempt,
            a.c.started_at,
            a.c.duration_ms,
            a.c.status_code,
            a.c.error,
            a.c.response_body,
            a.c.request_headers,
        )
        .where(condition)
        .order_by(a.c.seq)
    )
    async with db.read() as conn:
        rows = list(await conn.execute(query))
    return [Attempt(*r[:-1], json.loads(r[-1]) if r[-1] else None) for r in rows]


async def redrive(conn: AsyncConnection, tenant_id: str, delivery_id: str, now: datetime) -> bool:
    """Within the caller's transaction: one dead letter is pending again, with a
    fresh retry schedule. False when the tenant has no such dead letter."""
    return bool(await _redrive(conn, (d.c.id == delivery_id, d.c.tenant_id == tenant_id), now))


async def count_dead(
    db: Database,
    tenant_id: str,
    *,
    subscription_id: str | None,
    event_type: str | None,
    cap: int,
) -> int:
    """How many of the tenant's dead letters match, counted no further than
    ``cap`` (a range of a partial ``ix_deliveries_dead*`` index, ``cap`` entries
    at most)."""
    query = select(d.c.seq).where(d.c.status == DEAD, d.c.tenant_id == tenant_id)
    if subscription_id is not None:
        query = query.where(d.c.subscription_id == subscription_id)
    if event_type is not None:
        query = query.where(d.c.event_type == event_type)
    async with db.read() as conn:
        return int((await conn.execute(capped_count(query, cap))).scalar_one())


async def redrive_batch(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    subscription_id: str | None,
    event_type: str | None,
    now: datetime,
    batch: int,
) -> tuple[int, int]:
    """Within the caller's transaction: redrive up to ``batch`` of the oldest dead
    letters that match. Returns (how many matched, how many were redriven)."""
    candidates = select(d.c.seq).where(d.c.status == DEAD, d.c.tenant_id == tenant_id)
    if subscription_id is not None:
        candidates = candidates.where(d.c.subscription_id == subscription_id)
    if event_type is not None:
        candidates = candidates.where(d.c.event_type == event_type)
    seqs = [r[0] for r in await conn.execute(candidates.order_by(d.c.seq).limit(batch))]
    if not seqs:
        return 0, 0
    return len(seqs), await _redrive(conn, (d.c.seq.in_(seqs),), now)


async def _redrive(conn: AsyncConnection, which: tuple[Any, ...], now: datetime) -> int:
    # A redriven delivery waits its turn: it is ready only if it heads its line.
    result = await conn.execute(
        update(d)
        .where(*which, d.c.status == DEAD)
        .values(
            status="pending",
            ready=d.c.ordering_key.is_(None),
            round_attempts=0,
            next_attempt_at=now,
            dead_lettered_at=None,
        )
        .returning(d.c.subscription_id, d.c.ordering_key)
    )
    return await lines_moved_on(conn, [(r[0], r[1]) for r in result])


async def discard(conn: AsyncConnection, tenant_id: str, delivery_id: str, now: datetime) -> bool:
    """Within the caller's transaction: take a dead letter out of the DLQ for good;
    its line moves on. False when the tenant has no such dead letter."""
    result = await conn.execute(
        update(d)
        .where(d.c.id == delivery_id, d.c.tenant_id == tenant_id, d.c.status == DEAD)
        .values(status="discarded", completed_at=now)
        .returning(d.c.subscription_id, d.c.ordering_key)
    )
    return bool(await lines_moved_on(conn, [(r[0], r[1]) for r in result]))
