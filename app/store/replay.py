"""Replaying stored events to one subscription: new deliveries, original order."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from app.domain.filters import any_matches
from app.store import schema
from app.store.database import Database
from app.store.lines import add_deliveries, delivery_row

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
    """Create a delivery of every matching event received in ``[since, until)``
    (``until`` defaults to ``now``: later events reach the subscription by
    fan-out).

    Events are taken in ``seq`` order, a chunk per transaction, so new
    deliveries get sequence numbers in the events' original order and ingest
    is never blocked for long. The window's first and last ``seq`` are found
    on the ``received_at`` index first, so the chunks walk the primary key
    over the window only, never from the table's oldest event.
    """
    # ``seq + 0``: for a plain min(seq) PostgreSQL may walk the primary key from
    # the table's first row until one falls in the window.
    window = (e.c.received_at >= since, e.c.received_at < (until or now))
    bounds = select(func.min(e.c.seq + 0), func.max(e.c.seq + 0)).where(*window)
    async with db.read() as conn:
        first, last = (await conn.execute(bounds)).one()
    if first is None:
        return 0
    created = 0
    after = first - 1
    while True:
        query = (
            select(e.c.seq, e.c.id, e.c.type, e.c.key)
            .where(e.c.seq > after, e.c.seq <= last, *window)
            .order_by(e.c.seq)
            .limit(CHUNK)
        )
        async with db.write() as conn:
            chunk = list(await conn.execute(query))
            if not chunk:
                break
            after = chunk[-1].seq
            rows = [
                delivery_row(r.id, r.type, r.key, subscription_id, by_key, now)
                for r in chunk
                if any_matches(patterns, r.type)
            ]
            await add_deliveries(conn, rows)
            created += len(rows)
        if len(chunk) < CHUNK:
            break
    return created
