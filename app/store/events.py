"""Reading events back: one event with its deliveries, filtered lists, stats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store import lines, schema
from app.store.database import Database

DELIVERY_STATUSES = ("pending", "in_flight", "succeeded", "dead", "discarded")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    id: str
    type: str
    key: str | None
    data_json: str
    schema_version: int | None
    occurred_at: datetime | None
    received_at: datetime
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    id: str
    subscription_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None


@dataclass(frozen=True, slots=True)
class Stats:
    events: int
    subscriptions: int
    deliveries: dict[str, int]


_EVENT_COLUMNS = (
    schema.events.c.seq,
    schema.events.c.id,
    schema.events.c.type,
    schema.events.c.key,
    schema.events.c.data,
    schema.events.c.schema_version,
    schema.events.c.occurred_at,
    schema.events.c.received_at,
    schema.events.c.traceparent,
    schema.events.c.tracestate,
)


def _event(row: object) -> StoredEvent:
    r = row._mapping  # type: ignore[attr-defined]
    return StoredEvent(
        r["seq"],
        r["id"],
        r["type"],
        r["key"],
        r["data"],
        r["schema_version"],
        r["occurred_at"],
        r["received_at"],
        r["traceparent"],
        r["tracestate"],
    )


async def get_event(db: Database, tenant_id: str, event_id: str) -> StoredEvent | None:
    """The event, if it is the tenant's: another tenant's is not there."""
    e = schema.events
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(*_EVENT_COLUMNS).where(e.c.id == event_id, e.c.tenant_id == tenant_id)
            )
        ).first()
    return _event(row) if row else None


async def event_deliveries(db: Database, event_id: str) -> list[DeliverySummary]:
    d = schema.deliveries
    async with db.read() as conn:
        rows = await conn.execute(
            select(
                d.c.id,
                d.c.subscription_id,
                d.c.status,
                d.c.attempts,
                d.c.next_attempt_at,
                d.c.last_status_code,
            )
            .where(d.c.event_id == event_id)
            .order_by(d.c.seq)
        )
        return [
            DeliverySummary(
                r.id,
                r.subscription_id,
                r.status,
                r.attempts,
                r.next_attempt_at if r.status == "pending" else None,
                r.last_status_code,
            )
            for r in rows
        ]


async def list_events(
    db: Database,
    tenant_id: str,
    *,
    event_type: str | None,
    key: str | None,
    order: Literal["asc", "desc"],
    after_seq: int | None,
    limit: int,
    since: datetime | None = None,
    until: datetime | None = None,
    delivery_status: str | None = None,
) -> tuple[list[StoredEvent], int | None]:
    """A page of events and the ``seq`` to continue after (None on the last page).

    ``since``/``until`` bound ``received_at`` (``[since, until)``);
    ``delivery_status`` keeps events with at least one delivery in that status."""
    e = schema.events
    query = select(*_EVENT_COLUMNS).where(e.c.tenant_id == tenant_id)
    if event_type is not None:
        query = query.where(e.c.type == event_type)
    if key is not None:
        query = query.where(e.c.key == key)
    if since is not None:
        query = query.where(e.c.received_at >= since)
    if until is not None:
        query = query.where(e.c.received_at < until)
    if delivery_status is not None:
        d = schema.deliveries
        # Driven from the deliveries' status index: the matching event IDs,
        # then each event by its unique ID.
        query = query.where(e.c.id.in_(select(d.c.event_id).where(d.c.status == delivery_status)))
    if after_seq is not None:
        query = query.where(e.c.seq > after_seq if order == "asc" else e.c.seq < after_seq)
    query = query.order_by(e.c.seq.asc() if order == "asc" else e.c.seq.desc()).limit(limit + 1)
    async with db.read() as conn:
        page = [_event(r) for r in await conn.execute(query)]
    if len(page) > limit:
        return page[:limit], page[limit - 1].seq
    return page, None


async def stats(db: Database, tenant_id: str) -> Stats:
    async with db.read() as conn:
        return await _stats(conn, tenant_id)


async def _stats(conn: AsyncConnection, tenant_id: str) -> Stats:
    e, s, d = schema.events, schema.subscriptions, schema.deliveries
    events = (
        await conn.execute(select(func.count()).select_from(e).where(e.c.tenant_id == tenant_id))
    ).scalar_one()
    subscription_ids = [
        r[0] for r in await conn.execute(select(s.c.id).where(s.c.tenant_id == tenant_id))
    ]
    by_status = dict.fromkeys(DELIVERY_STATUSES, 0)
    if subscription_ids:
        # By subscription, on the (status, subscription_id) index: a tenant's
        # deliveries are its subscriptions'.
        query = (
            select(d.c.status, func.count())
            .where(d.c.status.in_(DELIVERY_STATUSES), d.c.subscription_id.in_(subscription_ids))
            .group_by(d.c.status)
        )
        for status, count in await conn.execute(query):
            by_status[status] = count
    return Stats(events, len(subscription_ids), by_status)


async def add_event_for(
    conn: AsyncConnection, event: dict[str, object], subscription_id: str, now: datetime
) -> None:
    """Store ``event`` with one delivery, to ``subscription_id`` only, whatever
    the subscriptions' filters (the console's test event)."""
    await conn.execute(schema.events.insert().values(**event))
    await lines.add_deliveries(
        conn,
        [
            lines.delivery_row(
                str(event["tenant_id"]),
                str(event["id"]),
                str(event["type"]),
                None,
                subscription_id,
                False,
                now,
            )
        ],
    )
