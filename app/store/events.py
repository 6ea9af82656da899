"""Reading events back: one event with its deliveries, filtered lists, stats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, any_, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.delivery_status import DELIVERY_STATUSES
from app.store import lines, schema
from app.store.counts import capped_count
from app.store.database import Database


# Not frozen: one is built for every delivery claimed, and a frozen dataclass's
# __init__ (object.__setattr__ per field) takes five times as long.
@dataclass(slots=True)
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
    examine: int | None = None,
) -> tuple[list[StoredEvent], int | None]:
    """A page of events and the ``seq`` to continue after (None on the last page).

    ``since``/``until`` bound ``received_at`` (``[since, until)``);
    ``delivery_status`` keeps events with at least one delivery in that status.
    When the tenant has at most ``STATUS_CANDIDATES`` such deliveries, the page
    is made from their events; else the events are walked in order, each
    checked for such a delivery. ``examine`` bounds a walk that filters rows
    (by delivery status or time) to that many events: the page may then come
    back short, with the ``seq`` the search goes on from."""
    e = schema.events
    seq = e.c.seq.asc() if order == "asc" else e.c.seq.desc()
    indexed: list[ColumnElement[bool]] = []  # what the walk's index serves
    if event_type is not None:
        indexed.append(e.c.type == event_type)
    if key is not None:
        indexed.append(e.c.key == key)
    if after_seq is not None:
        indexed.append(e.c.seq > after_seq if order == "asc" else e.c.seq < after_seq)
    rows: list[ColumnElement[bool]] = []  # what it checks event by event
    if since is not None:
        rows.append(e.c.received_at >= since)
    if until is not None:
        rows.append(e.c.received_at < until)
    edge = None
    async with db.read() as conn:
        few = None
        if delivery_status is not None:
            few = await _few_events_in_status(conn, tenant_id, delivery_status)
        if few is not None:
            # Their events are the tenant's: without a tenant condition, no
            # planner prefers walking the tenant's index to probing the IDs.
            where = [few, *indexed, *rows]
        else:
            indexed.insert(0, e.c.tenant_id == tenant_id)
            if delivery_status is not None:
                rows.append(_has_delivery_in(delivery_status))
            where = [*indexed, *rows]
            if examine is not None and rows:
                edge = await _examined_edge(conn, indexed, seq, examine)
                if edge is not None:
                    where.append(e.c.seq <= edge if order == "asc" else e.c.seq >= edge)
        query = select(*_EVENT_COLUMNS).where(*where).order_by(seq).limit(limit + 1)
        page = [_event(r) for r in await conn.execute(query)]
    if len(page) > limit:
        return page[:limit], page[limit - 1].seq
    return page, edge


STATUS_CANDIDATES = 2_000


def delivery_status_is(status: str) -> ColumnElement[bool]:
    """``deliveries.status = '…'`` with the status as a literal, which the
    partial indexes on a status (``ix_deliveries_dead*``) answer; a bound
    parameter would not match their predicates."""
    if status not in DELIVERY_STATUSES:
        raise ValueError(f"not a delivery status: {status!r}")
    return schema.deliveries.c.status == literal_column(f"'{status}'")


def _events_in_status(tenant_id: str, status: str) -> Select[tuple[str]]:
    """The events of the tenant's deliveries in ``status``: a range of a status index."""
    d, s = schema.deliveries, schema.subscriptions
    query = select(d.c.event_id).where(delivery_status_is(status))
    if status == "dead":
        return query.where(d.c.tenant_id == tenant_id)
    return query.where(d.c.subscription_id.in_(select(s.c.id).where(s.c.tenant_id == tenant_id)))


async def _few_events_in_status(
    conn: AsyncConnection, tenant_id: str, status: str
) -> ColumnElement[bool] | None:
    """The condition "the event is one of those" when the tenant has at most
    ``STATUS_CANDIDATES`` deliveries in ``status``, else None. PostgreSQL:
    ``id = ANY(ARRAY(…))``, probes by ID whatever its statistics say (a list
    of known length on a table it takes as small is scanned)."""
    candidates = _events_in_status(tenant_id, status)
    found = (await conn.execute(capped_count(candidates, STATUS_CANDIDATES + 1))).scalar_one()
    if found > STATUS_CANDIDATES:
        return None
    ids = schema.events.c.id
    if conn.dialect.name == "postgresql":
        return ids == any_(func.array(candidates.scalar_subquery()))
    return ids.in_(candidates)


def _has_delivery_in(status: str) -> ColumnElement[bool]:
    """Probed event by event on ``ix_deliveries_event_id``."""
    d = schema.deliveries
    return (
        select(d.c.id)
        .where(d.c.event_id == schema.events.c.id, delivery_status_is(status))
        .exists()
    )


async def _examined_edge(
    conn: AsyncConnection, indexed: list[ColumnElement[bool]], seq: Any, examine: int
) -> int | None:
    """The ``seq`` of the ``examine``-th event the walk reaches (None: it
    reaches fewer), read from the walk's index alone."""
    query = select(schema.events.c.seq).where(*indexed).order_by(seq).offset(examine - 1).limit(1)
    found: int | None = (await conn.execute(query)).scalar()
    return found


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
    by_status: dict[str, int] = dict.fromkeys(DELIVERY_STATUSES, 0)
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
