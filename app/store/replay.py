"""Replaying stored events to one subscription: new deliveries, original order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.content_filters import ContentFilter
from app.domain.filters import any_matches
from app.store import schema
from app.store.lines import add_deliveries, delivery_row

CHUNK = 1000
e = schema.events


@dataclass(frozen=True, slots=True)
class Replay:
    """What to replay: every event of the subscription's tenant received in
    ``[since, until)`` whose type matches (and content, with a filter), as new
    deliveries of one subscription."""

    tenant_id: str
    subscription_id: str
    patterns: list[str]
    by_key: bool
    since: datetime
    until: datetime
    content_filter: ContentFilter | None = None

    def window(self) -> tuple[ColumnElement[bool], ...]:
        return (
            e.c.received_at >= self.since,
            e.c.received_at < self.until,
            e.c.tenant_id == self.tenant_id,
        )


async def window_bounds(conn: AsyncConnection, replay: Replay) -> tuple[int, int] | None:
    """The first and last ``seq`` received in the window (None when it is empty),
    found on the ``received_at`` index, so that the chunks walk the primary key
    over the window only, never from the table's oldest event."""
    # ``seq + 0``: for a plain min(seq) PostgreSQL may walk the primary key from
    # the table's first row until one falls in the window.
    bounds = select(func.min(e.c.seq + 0), func.max(e.c.seq + 0)).where(*replay.window())
    first, last = (await conn.execute(bounds)).one()
    return None if first is None else (int(first), int(last))


async def replay_chunk(
    conn: AsyncConnection, replay: Replay, *, after: int, last: int, now: datetime
) -> tuple[int | None, int]:
    """Within the caller's transaction: new deliveries of the next ``CHUNK`` events
    of the window after ``seq`` ``after`` (up to ``last``), in ``seq`` order so that
    they keep the events' original order. Returns the last ``seq`` read (None
    when the window is done) and how many deliveries were made."""
    wanted = replay.content_filter
    # The data is read only to be matched.
    columns = (e.c.seq, e.c.id, e.c.type, e.c.key) + ((e.c.data,) if wanted else ())
    query = (
        select(*columns)
        .where(e.c.seq > after, e.c.seq <= last, *replay.window())
        .order_by(e.c.seq)
        .limit(CHUNK)
    )
    chunk = list(await conn.execute(query))
    rows = [
        delivery_row(
            replay.tenant_id, r.id, r.type, r.key, replay.subscription_id, replay.by_key, now
        )
        for r in chunk
        if any_matches(replay.patterns, r.type)
        and (wanted is None or wanted.matches(r.type, r.key, orjson.loads(r.data)))
    ]
    await add_deliveries(conn, rows)
    return (chunk[-1].seq if len(chunk) == CHUNK else None), len(rows)
