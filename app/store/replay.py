"""Replaying stored events to one subscription: new deliveries, original order."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text

from app.domain.filters import any_matches
from app.store import schema
from app.store.database import Database
from app.store.lines import delivery_row, lock_lines, mark_heads
from app.store.notify import CHANNEL

CHUNK = 1000
e = schema.events


async def replay(
    db: Database,
    *,
    subscription_id: str,
    patterns: list[str],
    by_key: bool,
    since: datetime,
    until: datetime | None,
    now: datetime,
) -> int:
    """Create a delivery of every matching event received in ``[since, until)``.

    Events are taken in ``seq`` order, a chunk per transaction, so new
    deliveries get sequence numbers in the events' original order and ingest
    is never blocked for long.
    """
    created = 0
    after = 0
    while True:
        query = select(e.c.seq, e.c.id, e.c.type, e.c.key).where(
            e.c.received_at >= since, e.c.seq > after
        )
        if until is not None:
            query = query.where(e.c.received_at < until)
        async with db.write() as conn:
            chunk = list(await conn.execute(query.order_by(e.c.seq).limit(CHUNK)))
            if not chunk:
                break
            after = chunk[-1].seq
            rows = [
                delivery_row(r.id, r.type, r.key, subscription_id, by_key, now)
                for r in chunk
                if any_matches(patterns, r.type)
            ]
            if rows:
                if db.dialect == "postgresql":
                    await lock_lines(conn, [(subscription_id, r.key) for r in chunk if by_key])
                await mark_heads(conn, rows)
                await conn.execute(schema.deliveries.insert(), rows)
                if db.dialect == "postgresql":
                    await conn.execute(text(f"NOTIFY {CHANNEL}"))
            created += len(rows)
        if len(chunk) < CHUNK:
            break
    return created
