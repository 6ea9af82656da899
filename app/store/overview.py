"""What the console's overview reads besides the gauges' snapshot: recent
ingest per minute and the outcome of the latest attempts. Both are bounded:
an index range over five minutes of ``received_at``, the last N attempts by key."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, text

from app.store import schema
from app.store.database import Database

ID_CHUNK = 500  # delivery IDs per statement


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


# The tenant's deliveries among the latest attempts'. PostgreSQL: joined by
# ``id = ANY(ARRAY(…))``, a handful of index probes whatever its statistics
# say (an IN list or a join of a LIMIT of unknown size hashed the table).
_THEIRS_PG = text(
    """
    SELECT d.id FROM deliveries d
    WHERE d.id = ANY(ARRAY(SELECT a.delivery_id FROM attempts a ORDER BY a.seq DESC LIMIT :window))
      AND d.tenant_id = :tenant
    """
)


async def latest_attempt_codes(db: Database, tenant_id: str, window: int) -> list[int | None]:
    """The status codes (None: no HTTP answer) of the tenant's attempts among
    the installation's latest ``window``: a walk down the attempts' key, then
    their deliveries by ID."""
    a, d = schema.attempts, schema.deliveries
    async with db.read() as conn:
        latest = list(
            await conn.execute(
                select(a.c.delivery_id, a.c.status_code).order_by(a.c.seq.desc()).limit(window)
            )
        )
        if conn.dialect.name == "postgresql":
            rows = await conn.execute(_THEIRS_PG, {"window": window, "tenant": tenant_id})
            theirs = {r[0] for r in rows}
        else:
            ids = sorted({r[0] for r in latest})
            theirs = set()
            for start in range(0, len(ids), ID_CHUNK):
                query = select(d.c.id).where(
                    d.c.id.in_(ids[start : start + ID_CHUNK]), d.c.tenant_id == tenant_id
                )
                theirs.update(r[0] for r in await conn.execute(query))
    return [code for delivery_id, code in latest if delivery_id in theirs]
