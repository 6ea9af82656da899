"""The ingest transaction: events, their delivery rows and their idempotency
keys, for many requests at once (group commit), all or nothing per request.

Idempotency keys are resolved in two phases inside one write transaction:
first read what is already remembered and decide every item (new, replay,
reused key: :func:`app.domain.idempotency.decide`); then write. A key another
process commits between the two phases (PostgreSQL only; SQLite has one
writer) shows up as a missing ``RETURNING`` row, and the whole transaction is
retried, when the first phase will see it.

Each dialect has its own I/O around the one decision. On SQLite the whole
transaction is one call on the writer's thread (:func:`app.store.driver.sqlite_write`);
on PostgreSQL every step is one statement, its rows as arrays.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain import idempotency
from app.domain.content_filters import ContentFilter, document, stored_filter
from app.domain.events import NewEvent, accepted_body
from app.domain.filters import any_matches
from app.domain.idempotency import Decision, ScopedKey, StoredKey, UnitResult
from app.domain.operator_events import reports_on
from app.store import driver, schema
from app.store.database import Database
from app.store.lines import (
    DELIVERY_COLUMNS,
    DELIVERY_FIELDS,
    add_deliveries,
    busy_lines_sqlite,
    delivery_row,
    lines_of,
    settle_heads,
)

MAX_RETRIES = 5


class KeyRace(Exception):
    """Another transaction committed one of our idempotency keys; retry."""


@dataclass(frozen=True, slots=True)
class _Subscription:
    id: str
    tenant_id: str
    patterns: tuple[str, ...]
    by_key: bool
    content_filter: ContentFilter | None


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    results: list[UnitResult]
    deliveries: int  # delivery rows created, so the caller knows to wake a worker


async def ingest(
    db: Database, units: Sequence[Sequence[NewEvent]], *, ttl: timedelta, now: datetime
) -> IngestOutcome:
    """Store every unit that can be stored, in one transaction."""
    cutoff = now - ttl
    for attempt in range(MAX_RETRIES):
        try:
            if db.is_sqlite:
                return await driver.sqlite_write(db, partial(_ingest_sqlite, units, cutoff))
            async with db.write() as conn:
                return await _ingest_postgres(conn, units, cutoff)
        except KeyRace:
            if attempt == MAX_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def _outcome(decision: Decision, bodies: dict[str, str], deliveries: int) -> IngestOutcome:
    return IngestOutcome(idempotency.answers(decision, bodies), deliveries)


def _created_at(stored: object) -> datetime:
    moment = schema.stored_utc(stored)
    assert moment is not None  # the column is NOT NULL
    return moment


def _stored(rows: Iterable[Sequence[Any]], wanted: set[ScopedKey]) -> dict[ScopedKey, StoredKey]:
    """The stored keys among ``wanted``: rows are read by tenant and key apart,
    so a row may pair a tenant with another tenant's key."""
    found: dict[ScopedKey, StoredKey] = {}
    for row in rows:
        scoped = (row[0], row[1])
        if scoped in wanted:
            found[scoped] = StoredKey(row[2], row[3], row[4], _created_at(row[5]))
    return found


def _subscription(row: Sequence[Any]) -> _Subscription:
    # A filter is compiled once per distinct stored text (stored_filter caches).
    content_filter = stored_filter(row[4]) if row[4] else None
    return _Subscription(
        row[0], row[3], tuple(orjson.loads(row[1])), row[2] == "key", content_filter
    )


def _fan_out(events: list[NewEvent], subscriptions: list[_Subscription]) -> list[dict[str, object]]:
    """One delivery per event and subscription of the event's tenant whose event
    types and filter match it (an event's data is parsed only when a filter asks)."""
    by_tenant: dict[str, list[_Subscription]] = {}
    for sub in subscriptions:
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


def _tenants(units: Sequence[Sequence[NewEvent]]) -> list[str]:
    return sorted({e.tenant_id for unit in units for e in unit})


def _bodies(new_events: list[NewEvent], fanout: list[dict[str, object]]) -> dict[str, str]:
    """Each new event's 202 body, built once: it is both stored with the
    idempotency key and answered."""
    counts = dict.fromkeys((e.id for e in new_events), 0)
    for row in fanout:
        counts[str(row["event_id"])] += 1
    return {e.id: accepted_body(e, counts[e.id]) for e in new_events}


def _keyed(new_events: list[NewEvent]) -> list[NewEvent]:
    return sorted((e for e in new_events if e.idempotency_key), key=lambda e: e.scoped_key or ("",))


_SELECT_KEYS = (
    "SELECT tenant_id, key, fingerprint, event_id, response_body, created_at FROM idempotency_keys"
)
_SELECT_SUBSCRIPTIONS = (
    "SELECT id, event_types, ordering, tenant_id, filter FROM subscriptions "
    "WHERE status <> 'disabled' AND tenant_id IN {tenants} ORDER BY id"
)
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


_KEY_COLUMNS = "key, fingerprint, event_id, response_status, response_body, created_at, tenant_id"


# -- SQLite: the whole transaction in one call on the writer's thread ----------
#
# app.store.driver.sqlite_write runs it between BEGIN IMMEDIATE and COMMIT with
# the plain sqlite3 connection: one hand-off a flush instead of one a statement
# plus SQLAlchemy's begin and commit. Times are stored as text; each event's
# receipt is formatted once for the event, its deliveries and its key.

_KEY_CHUNK = 500  # keys per SELECT, well under SQLite's limit on bound variables

# The flush's reads in one statement of one row: the stored keys among the
# first chunk and the subscriptions, each as a JSON array. Every statement on
# the writer's thread gives up the GIL and waits to win it back from the busy
# event loop (driver.sqlite_run_rows), and the flush is what bounds ingest.
_SQLITE_READS = """
    SELECT
      (SELECT json_group_array(
                json_array(tenant_id, key, fingerprint, event_id, response_body, created_at))
       FROM idempotency_keys WHERE tenant_id IN {tenants} AND key IN {marks}),
      (SELECT json_group_array(json_array(id, event_types, ordering, tenant_id, filter))
       FROM ({subscriptions}))
"""
# The inserts take their rows as one VALUES list (driver.sqlite_run_rows):
# one step a statement, where executemany stepped, and gave up the GIL, per
# row. SQLite inserts a VALUES list in order, so seq follows the batch.
_SQLITE_INSERT_EVENTS = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES {{rows}}"
_SQLITE_INSERT_DELIVERIES = f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) VALUES {{rows}}"
_SQLITE_INSERT_KEYS = (
    f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) VALUES {{rows}} "
    "ON CONFLICT (tenant_id, key) DO NOTHING"
)


def _ingest_sqlite(
    units: Sequence[Sequence[NewEvent]], cutoff: datetime, conn: sqlite3.Connection
) -> IngestOutcome:
    keys = idempotency.keys(units)
    wanted = set(keys)
    tenants = _tenants(units)
    tenant_marks = driver.marks(len(tenants))
    first = keys[:_KEY_CHUNK]
    key_tenants = sorted({t for t, _ in first})
    sql = _SQLITE_READS.format(
        tenants=driver.marks(len(key_tenants)) if first else "(NULL)",
        marks=driver.marks(len(first)) if first else "(NULL)",
        subscriptions=_SELECT_SUBSCRIPTIONS.format(tenants=tenant_marks),
    )
    params = [*key_tenants, *(k for _, k in first), *tenants]
    stored_json, subscriptions_json = conn.execute(sql, params).fetchone()
    stored = _stored(orjson.loads(stored_json), wanted)
    for start in range(_KEY_CHUNK, len(keys), _KEY_CHUNK):
        chunk = keys[start : start + _KEY_CHUNK]
        chunk_tenants = sorted({t for t, _ in chunk})
        sql = (
            f"{_SELECT_KEYS} WHERE tenant_id IN {driver.marks(len(chunk_tenants))} "
            f"AND key IN {driver.marks(len(chunk))}"
        )
        stored.update(_stored(conn.execute(sql, [*chunk_tenants, *(k for _, k in chunk)]), wanted))
    decision = idempotency.decide(units, stored, cutoff)
    new_events = decision.new_events
    if not new_events:
        return _outcome(decision, {}, 0)
    subscriptions = [_subscription(row) for row in orjson.loads(subscriptions_json)]
    fanout = _fan_out(new_events, subscriptions)
    stamp = schema.sqlite_timestamp
    received = {e.id: stamp(e.received_at) for e in new_events}
    driver.sqlite_run_rows(
        conn,
        _SQLITE_INSERT_EVENTS,
        [
            _event_values(e, stamp(e.occurred_at) if e.occurred_at else None, received[e.id])
            for e in new_events
        ],
    )
    if fanout:
        busy: set[tuple[object, object]] = set(busy_lines_sqlite(conn, lines_of(fanout)))
        settle_heads(fanout, busy)
        _insert_deliveries_sqlite(conn, fanout, received)
    bodies = _bodies(new_events, fanout)
    keyed = _keyed(new_events)
    for tenant_id, key in decision.reclaim:
        conn.execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = ? AND key = ? AND created_at < ?",
            [tenant_id, key, stamp(cutoff)],
        )
    rows = [
        (e.idempotency_key, e.fingerprint, e.id, 202, bodies[e.id], received[e.id], e.tenant_id)
        for e in keyed
    ]
    # A conflict changes no row.
    if driver.sqlite_run_rows(conn, _SQLITE_INSERT_KEYS, rows) != len(keyed):
        raise KeyRace()
    return _outcome(decision, bodies, len(fanout))


def _insert_deliveries_sqlite(
    conn: sqlite3.Connection, fanout: list[dict[str, object]], received: dict[str, str]
) -> None:
    # A new delivery is created, and due, when its event was received (_fan_out).
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


# -- PostgreSQL: one statement each, the rows as arrays (unnest) ---------------
#
# Rendered once and run through exec_driver_sql (app.store.driver says why).
# Rows are inserted, and so numbered (seq), in array order: a batch's order.

_PG_INSERT_EVENTS = (
    f"INSERT INTO events ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], "
    "$7::timestamptz[], $8::text[], $9::text[], $10::text[]) "
    f"WITH ORDINALITY AS t({_EVENT_COLUMNS}, n) ORDER BY n"
)
_PG_INSERT_KEYS = (
    f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) SELECT * FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[], $7::text[]) "
    "ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key"
)
_PG_SELECT_KEYS = f"{_SELECT_KEYS} WHERE tenant_id = ANY($1::text[]) AND key = ANY($2::text[])"
_PG_SELECT_SUBSCRIPTIONS = _SELECT_SUBSCRIPTIONS.format(tenants="(SELECT unnest($1::text[]))")


async def _ingest_postgres(
    conn: AsyncConnection, units: Sequence[Sequence[NewEvent]], cutoff: datetime
) -> IngestOutcome:
    keys = idempotency.keys(units)
    params = [sorted({t for t, _ in keys}), [k for _, k in keys]]
    rows = await driver.fetch_all(conn, _PG_SELECT_KEYS, params) if keys else []
    decision = idempotency.decide(units, _stored(rows, set(keys)), cutoff)
    new_events = decision.new_events
    if not new_events:
        return _outcome(decision, {}, 0)
    tenants = [_tenants([new_events])]
    subscriptions = [
        _subscription(r) for r in await driver.fetch_all(conn, _PG_SELECT_SUBSCRIPTIONS, tenants)
    ]
    fanout = _fan_out(new_events, subscriptions)
    events = [_event_values(e, e.occurred_at, e.received_at) for e in new_events]
    await driver.fetch_all(conn, _PG_INSERT_EVENTS, driver.columns(events, _EVENT_WIDTH))
    await add_deliveries(conn, fanout)
    bodies = _bodies(new_events, fanout)
    await _insert_keys_postgres(conn, new_events, bodies, decision.reclaim, cutoff)
    return _outcome(decision, bodies, len(fanout))


async def _insert_keys_postgres(
    conn: AsyncConnection,
    new_events: list[NewEvent],
    bodies: dict[str, str],
    reclaim: list[ScopedKey],
    cutoff: datetime,
) -> None:
    keyed = _keyed(new_events)
    if not keyed:
        return
    t = schema.idempotency_keys
    for tenant_id, key in reclaim:
        await conn.execute(
            delete(t).where(t.c.tenant_id == tenant_id, t.c.key == key, t.c.created_at < cutoff)
        )
    rows = [
        (e.idempotency_key, e.fingerprint, e.id, 202, bodies[e.id], e.received_at, e.tenant_id)
        for e in keyed
    ]
    stored = await driver.fetch_all(conn, _PG_INSERT_KEYS, driver.columns(rows, 7))
    if len(stored) != len(keyed):
        raise KeyRace()


# -- Events another write transaction makes (operator events) ------------------
#
# The same fan-out and the same inserts as a flush, inside the caller's
# transaction, without idempotency keys, to the subscriptions the caller read
# with ``listeners``: those that are not disabled and have a pattern naming
# reserved types (only a pattern starting with ``eventrelay.`` can match one,
# app.domain.filters; as JSON text, an element starting ``"eventrelay.``). An
# operator event is not delivered to the subscription it reports on
# (app.domain.operator_events).

Subscriber = _Subscription
_NAMES_RESERVED = "s.event_types LIKE '%\"eventrelay.%'"
# The subscriptions as the flush reads them (the same columns), narrowed.
_SELECT_LISTENERS = "SELECT * FROM ({subscriptions}) AS s WHERE {names} ORDER BY s.id".format(
    subscriptions=_SELECT_SUBSCRIPTIONS.format(tenants="(SELECT id FROM tenants)"),
    names=_NAMES_RESERVED,
)
# SQL: some subscription listens (for an EXISTS).
LISTENING = f"SELECT 1 FROM subscriptions s WHERE s.status <> 'disabled' AND {_NAMES_RESERVED}"


def listeners_sqlite(conn: sqlite3.Connection) -> list[Subscriber]:
    """:func:`listeners` on SQLite's writer thread."""
    return [_subscription(row) for row in conn.execute(_SELECT_LISTENERS)]


async def listeners(conn: AsyncConnection) -> list[Subscriber]:
    """The subscriptions that may receive operator events (a superset: the
    fan-out matches each pattern)."""
    return [_subscription(row) for row in await driver.fetch_all(conn, _SELECT_LISTENERS)]


def _fan_out_own(
    events: Sequence[NewEvent], subscriptions: list[_Subscription]
) -> tuple[list[NewEvent], list[dict[str, object]]]:
    """The events to store (those of a tenant with a listener) and their
    deliveries (not to the subscription each reports on)."""
    tenants = {s.tenant_id for s in subscriptions}
    kept = [e for e in events if e.tenant_id in tenants]
    about = {e.id: reports_on(e) for e in kept}
    rows = [
        row
        for row in _fan_out(kept, subscriptions)
        if row["subscription_id"] != about[str(row["event_id"])]
    ]
    return kept, rows


def store_events_sqlite(
    conn: sqlite3.Connection, events: Sequence[NewEvent], subscribers: list[Subscriber]
) -> int:
    """Within a transaction on SQLite's writer thread: insert ``events`` and their
    deliveries to ``subscribers``; returns how many deliveries were made."""
    events, fanout = _fan_out_own(events, subscribers)
    if not events:
        return 0
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
        _insert_deliveries_sqlite(conn, fanout, received)
    return len(fanout)


async def store_events(
    conn: AsyncConnection, events: Sequence[NewEvent], subscribers: list[Subscriber]
) -> int:
    """Within the caller's transaction (either database): insert ``events`` and
    their deliveries to ``subscribers``; returns how many deliveries were made."""
    events, fanout = _fan_out_own(events, subscribers)
    if not events:
        return 0
    values = [_event_values(e, e.occurred_at, e.received_at) for e in events]
    if conn.dialect.name == "postgresql":
        await driver.fetch_all(conn, _PG_INSERT_EVENTS, driver.columns(values, _EVENT_WIDTH))
    else:
        names = _EVENT_COLUMNS.split(", ")
        rows_in = [dict(zip(names, v, strict=True)) for v in values]
        await conn.execute(schema.events.insert(), rows_in)
    await add_deliveries(conn, fanout)
    return len(fanout)
