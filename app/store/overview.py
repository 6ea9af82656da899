"""What the console's overview reads besides the gauges' snapshot: recent
ingest per minute and the outcome of the latest attempts. Both are bounded:
an index range over five minutes of ``received_at``, the last N attempts by key."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from app.store import schema
from app.store.database import Database


async def events_per_minute(db: Database, tenant_id: str, now: datetime, minutes: int) -> list[int]:
    """Events received in each of the ``minutes`` one-minute windows ending at ``now``,
    oldest first (one count per minute, each an index range on ``received_at``)."""
    e = schema.events
    counts = []
    async with db.read() as conn:
        for back in range(minutes, 0, -1):
            start, end = now - timedelta(minutes=back), now - timedelta(minutes=back - 1)
            query = (
                select(func.count())
                .select_from(e)
                .where(e.c.received_at >= start, e.c.received_at < end, e.c.tenant_id == tenant_id)
            )
            counts.append(int((await conn.execute(query)).scalar_one()))
    return counts


async def latest_attempt_codes(db: Database, tenant_id: str, limit: int) -> list[int | None]:
    """The status codes of the tenant's latest ``limit`` attempts (None: no HTTP
    answer), newest first by the attempts' key."""
    a, d = schema.attempts, schema.deliveries
    query = (
        select(a.c.status_code)
        .select_from(a.join(d, d.c.id == a.c.delivery_id))
        .where(d.c.tenant_id == tenant_id)
        .order_by(a.c.seq.desc())
        .limit(limit)
    )
    async with db.read() as conn:
        rows = await conn.execute(query)
        return [r[0] for r in rows]
