"""New events and their delivery rows: which subscriptions an event goes to,
and the inserts that store both, inside the caller's write transaction.

Used by the ingest flush (:mod:`app.store.ingest`, which adds the
idempotency keys) and by the transactions that report operator events
(:mod:`app.store.operator_events`). An event goes to every subscription of
its tenant that is not disabled, whose event types match its type and whose
content filter (if any) matches it; the new delivery rows join their lines
(:func:`app.store.lines.settle_heads`), so per-key order holds from the first
row. On SQLite the inserts run on the writer's thread with the plain
``sqlite3`` connection (:func:`app.store.driver.sqlite_write`), times as text;
on PostgreSQL every insert is one statement, its rows as arrays.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.content_filters import ContentFilter, document, stored_filter
from app.domain.events import NewEvent
from app.domain.filters import any_matches
from app.domain.operator_events import reports_on
from app.store import driver, schema
from app.store.lines import (
    DELIVERY_COLUMNS,
    DELIVERY_FIELDS,
    add_deliveries,
    busy_lines_sqlite,
    delivery_row,
    line_is_busy,
    lines_of,
    settle_heads,
)


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A subscription as the fan-out sees it."""

    id: str
    tenant_id: str
    patterns: tuple[str, ...]
    by_key: bool
    content_filter: ContentFilter | None


# SQL: the subscribers of some tenants (``{tenants}``: a parenthesised list or
# subquery), in the columns :func:`subscriber` reads.
SELECT_SUBSCRIBERS = (
    "SELECT id, event_types, ordering, tenant_id, filter FROM subscriptions "
    "WHERE status <> 'disabled' AND tenant_id IN {tenants} ORDER BY id"
)


def subscriber(row: Sequence[Any]) -> Subscriber:
    """A row of :data:`SELECT_SUBSCRIBERS`."""
    # A filter is compiled once per distinct stored text (stored_filter caches).
    content_filter = stored_filter(row[4]) if row[4] else None
    return Subscriber(row[0], row[3], tuple(orjson.loads(row[1])), row[2] == "key", content_filter)


def fan_out(events: Sequence[NewEvent], subscribers: list[Subscriber]) -> list[dict[str, object]]:
    """One delivery per event and subscription of the event's tenant whose event
    types and filter match it (an event's data is parsed only when a filter asks)."""
    by_tenant: dict[str, list[Subscriber]] = {}
    for sub in subscribers:
        by_tenant.setdefault(sub.tenant_id, []).append(sub)
    rows = []
    for event in events:
        doc = None
        for sub in by_tenant.get(event.tenant_id, ()):
            if not any_matches(sub.patterns, event.type):
                continue
            if sub.content_filter is not None:
                if doc is None:
                    doc = document(event.type, event.key, orjson.loads(event.data_json))
                if not sub.content_filter.matches_document(doc):
                    continue
            rows.append(
                delivery_row(
                    event.tenant_id,
                    event.id,
                    event.type,
                    event.key,
                    sub.id,
                    sub.by_key,
                    event.received_at,
                )
            )
    return rows


_EVENT_COLUMNS = (
    "id, type, key, data, schema_version, occurred_at, received_at, tenant_id, "
    "traceparent, tracestate"
)
_EVENT_WIDTH = len(_EVENT_COLUMNS.split(", "))


def _event_values(event: NewEvent, occurred_at: object, received_at: object) -> tuple[object, ...]:
    """An event's row in ``_EVENT_COLUMNS`` order; the times in the form the
    statement takes (datetimes, or SQLite's stored text)."""
    e = event
    return (
        e.id, e.type, e.key, e.data_json, e.schema_version, occurred_at, received_at,
        e.tenant_id, e.traceparent, e.tracestate,
    )  # fmt: skip


# -- SQLite: on the writer's thread ---------------------------------------------
#
# The inserts take their rows as one VALUES list (driver.sqlite_run_rows):
# one step a statement, where executemany stepped, and gave up the GIL, per
# row. SQLite inserts a VALUES list in order, so seq follows the batch.

_SQLITE_INSERT_EVENTS = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES {{rows}}"
_SQLITE_INSERT_DELIVERIES = f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES {{rows}}"


def insert_sqlite(
    conn: sqlite3.Connection, events: Sequence[NewEvent], fanout: list[dict[str, object]]
) -> dict[str, str]:
    """Within a transaction on SQLite's writer thread: insert ``events`` and the
    delivery rows ``fanout`` (:func:`fan_out`) made for them. Returns each
    event's receipt as stored text, by event ID (formatted once per event)."""
    stamp = schema.sqlite_timestamp
    received = {e.id: stamp(e.received_at) for e in events}
    driver.sqlite_run_rows(
        conn,
        _SQLITE_INSERT_EVENTS,
        [
            _event_values(e, stamp(e.occurred_at) if e.occurred_at else None, received[e.id])
            for e in events
        ],
    )
    if fanout:
        busy: set[tuple[object, object]] = set(busy_lines_sqlite(conn, lines_of(fanout)))
        settle_heads(fanout, busy)
        # A new delivery is created, and due, when its event was received.
        driver.sqlite_run_rows(
            conn,
            _SQLITE_INSERT_DELIVERIES,
            [
                (
                    *(row[f] for f in DELIVERY_FIELDS[:6]),
                    1 if row["ready"] else 0,
                    row["attempts"],
                    row["round_attempts"],
                    received[str(row["event_id"])],
                    received[str(row["event_id"])],
                    row["tenant_id"],
                )
                for row in fanout
            ],
        )
    return received


# -- Either database, in an async transaction ------------------------------------
#
# On PostgreSQL one statement, the rows as arrays (unnest), rendered once and
# run through exec_driver_sql (app.store.driver says why); rows are inserted,
# and so numbered (seq), in array order: a batch's order.

_PG_INSERT_EVENTS = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], "
    "$7::timestamptz[], $8::text[], $9::text[], $10::text[]) "
    f"WITH ORDINALITY AS t({_EVENT_COLUMNS}, n) ORDER BY n"
)


async def insert(
    conn: AsyncConnection, events: Sequence[NewEvent], fanout: list[dict[str, object]]
) -> None:
    """Within the caller's transaction: insert ``events`` and the delivery rows
    ``fanout`` made for them."""
    values = [_event_values(e, e.occurred_at, e.received_at) for e in events]
    if conn.dialect.name == "postgresql":
        await driver.fetch_all(conn, _PG_INSERT_EVENTS, driver.columns(values, _EVENT_WIDTH))
    else:
        names = _EVENT_COLUMNS.split(", ")
        rows_in = [dict(zip(names, v, strict=True)) for v in values]
        await conn.execute(schema.events.insert(), rows_in)
    await add_deliveries(conn, fanout)


# -- PostgreSQL: the events and deliveries of an ingest write ------------------
#
# The ingest flush (app.store.ingest) writes its events, their deliveries and
# its idempotency keys in one statement; these are its first two parts, as
# data-modifying CTEs over the arrays of pg_ingest_arrays ($1-$10 the events,
# $11-$22 the deliveries), inserted in array order. Each delivery that heads
# its line within the flush (settle_heads over no busy line) is ready unless
# the line is busy in the table, checked in the statement itself: its snapshot
# must come after the lines' locks, so the caller takes them in a statement
# of their own first (lines.lock_lines).

_UNNEST_DELIVERIES = (
    "unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], "
    "$17::boolean[], $18::int[], $19::int[], $20::timestamptz[], $21::timestamptz[], "
    f"$22::text[]) WITH ORDINALITY AS t({DELIVERY_COLUMNS}, n)"
)
_HEADS_UNLESS_BUSY = (
    "CASE WHEN t.ordering_key IS NULL OR NOT t.ready THEN t.ready "
    f"ELSE NOT {line_is_busy('t.subscription_id', 't.ordering_key')} END"
)
PG_INGEST_INSERTS = f"""new_events AS (
    {_PG_INSERT_EVENTS}
), new_deliveries AS (
    INSERT INTO deliveries ({DELIVERY_COLUMNS})
    SELECT {DELIVERY_COLUMNS.replace("ready", _HEADS_UNLESS_BUSY)}
    FROM {_UNNEST_DELIVERIES} ORDER BY n
)"""
PG_INGEST_WIDTH = _EVENT_WIDTH + len(DELIVERY_FIELDS)  # arrays of PG_INGEST_INSERTS


def pg_ingest_arrays(events: Sequence[NewEvent], fanout: list[dict[str, object]]) -> list[Any]:
    """The parameters of :data:`PG_INGEST_INSERTS`: ``events`` and the delivery
    rows ``fanout`` (:func:`fan_out`) made for them, one array per column.
    Marks each row that heads its line within the flush ready (the statement
    checks the table)."""
    settle_heads(fanout, set())
    values = [_event_values(e, e.occurred_at, e.received_at) for e in events]
    rows = [tuple(row[f] for f in DELIVERY_FIELDS) for row in fanout]
    return [
        *driver.columns(values, _EVENT_WIDTH),
        *driver.columns(rows, len(DELIVERY_FIELDS)),
    ]


# -- Events another write transaction makes (operator events) ------------------
#
# The same fan-out and the same inserts as a flush, inside the caller's
# transaction, without idempotency keys, to the subscriptions the caller read
# with ``listeners``: those that are not disabled and have a pattern naming
# reserved types (only a pattern starting with ``eventrelay.`` can match one,
# app.domain.filters; as JSON text, an element starting ``"eventrelay.``). An
# operator event is not delivered to the subscription it reports on
# (app.domain.operator_events).

_NAMES_RESERVED = "s.event_types LIKE '%\"eventrelay.%'"
# The subscribers as the flush reads them (the same columns), narrowed.
_SELECT_LISTENERS = "SELECT * FROM ({subscribers}) AS s WHERE {names} ORDER BY s.id".format(
    subscribers=SELECT_SUBSCRIBERS.format(tenants="(SELECT id FROM tenants)"),
    names=_NAMES_RESERVED,
)
# SQL: some subscription listens (for an EXISTS).
LISTENING = f"SELECT 1 FROM subscriptions s WHERE s.status <> 'disabled' AND {_NAMES_RESERVED}"


def listeners_sqlite(conn: sqlite3.Connection) -> list[Subscriber]:
    """:func:`listeners` on SQLite's writer thread."""
    return [subscriber(row) for row in conn.execute(_SELECT_LISTENERS)]


async def listeners(conn: AsyncConnection) -> list[Subscriber]:
    """The subscriptions that may receive operator events (a superset: the
    fan-out matches each pattern)."""
    return [subscriber(row) for row in await driver.fetch_all(conn, _SELECT_LISTENERS)]


def _fan_out_own(
    events: Sequence[NewEvent], subscribers: list[Subscriber]
) -> tuple[list[NewEvent], list[dict[str, object]]]:
    """The events to store (those of a tenant with a listener) and their
    deliveries (not to the subscription each reports on)."""
    tenants = {s.tenant_id for s in subscribers}
    kept = [e for e in events if e.tenant_id in tenants]
    about = {e.id: reports_on(e) for e in kept}
    rows = [
        row
        for row in fan_out(kept, subscribers)
        if row["subscription_id"] != about[str(row["event_id"])]
    ]
    return kept, rows


def store_events_sqlite(
    conn: sqlite3.Connection, events: Sequence[NewEvent], subscribers: list[Subscriber]
) -> int:
    """Within a transaction on SQLite's writer thread: insert ``events`` and their
    deliveries to ``subscribers``; returns how many deliveries were made."""
    kept, fanout = _fan_out_own(events, subscribers)
    if kept:
        insert_sqlite(conn, kept, fanout)
    return len(fanout)


async def store_events(
    conn: AsyncConnection, events: Sequence[NewEvent], subscribers: list[Subscriber]
) -> int:
    """Within the caller's transaction (either database): insert ``events`` and
    their deliveries to ``subscribers``; returns how many deliveries were made."""
    kept, fanout = _fan_out_own(events, subscribers)
    if kept:
        await insert(conn, kept, fanout)
    return len(fanout)
