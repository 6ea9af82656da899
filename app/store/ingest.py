"""The ingest transaction: events, their delivery rows and their idempotency
keys, for many requests at once (group commit), all or nothing per request.
Which subscriptions an event goes to, and the inserts of the events and their
deliveries, are :mod:`app.store.fanout`'s; this module owns the keys.

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
from app.domain.events import NewEvent, accepted_body
from app.domain.idempotency import Decision, ScopedKey, StoredKey, UnitResult
from app.store import driver, fanout, schema
from app.store.database import Database

MAX_RETRIES = 5


class KeyRace(Exception):
    """Another transaction committed one of our idempotency keys; retry."""


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
                # Urgent: its requests wait for their 202, a delivery cycle does not.
                return await driver.sqlite_write(
                    db, partial(_ingest_sqlite, units, cutoff), urgent=True
                )
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


def _tenants(units: Sequence[Sequence[NewEvent]]) -> list[str]:
    return sorted({e.tenant_id for unit in units for e in unit})


def _bodies(new_events: list[NewEvent], deliveries: list[dict[str, object]]) -> dict[str, str]:
    """Each new event's 202 body, built once: it is both stored with the
    idempotency key and answered."""
    counts = dict.fromkeys((e.id for e in new_events), 0)
    for row in deliveries:
        counts[str(row["event_id"])] += 1
    return {e.id: accepted_body(e, counts[e.id]) for e in new_events}


def _keyed(new_events: list[NewEvent]) -> list[NewEvent]:
    return sorted((e for e in new_events if e.idempotency_key), key=lambda e: e.scoped_key or ("",))


_SELECT_KEYS = (
    "SELECT tenant_id, key, fingerprint, event_id, response_body, created_at FROM idempotency_keys"
)
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
# One VALUES list (driver.sqlite_run_rows), as fanout's inserts.
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
        subscriptions=fanout.SELECT_SUBSCRIBERS.format(tenants=tenant_marks),
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
    subscribers = [fanout.subscriber(row) for row in orjson.loads(subscriptions_json)]
    deliveries = fanout.fan_out(new_events, subscribers)
    received = fanout.insert_sqlite(conn, new_events, deliveries)
    bodies = _bodies(new_events, deliveries)
    keyed = _keyed(new_events)
    for tenant_id, key in decision.reclaim:
        conn.execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = ? AND key = ? AND created_at < ?",
            [tenant_id, key, schema.sqlite_timestamp(cutoff)],
        )
    rows = [
        (e.idempotency_key, e.fingerprint, e.id, 202, bodies[e.id], received[e.id], e.tenant_id)
        for e in keyed
    ]
    # A conflict changes no row.
    if driver.sqlite_run_rows(conn, _SQLITE_INSERT_KEYS, rows) != len(keyed):
        raise KeyRace()
    return _outcome(decision, bodies, len(deliveries))


# -- PostgreSQL: one statement each, the rows as arrays (unnest) ---------------
#
# Rendered once and run through exec_driver_sql (app.store.driver says why).

_PG_INSERT_KEYS = (
    f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) SELECT * FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[], $7::text[]) "
    "ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key"
)
_PG_SELECT_KEYS = f"{_SELECT_KEYS} WHERE tenant_id = ANY($1::text[]) AND key = ANY($2::text[])"
_PG_SELECT_SUBSCRIBERS = fanout.SELECT_SUBSCRIBERS.format(tenants="(SELECT unnest($1::text[]))")


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
    rows = await driver.fetch_all(conn, _PG_SELECT_SUBSCRIBERS, tenants)
    deliveries = fanout.fan_out(new_events, [fanout.subscriber(r) for r in rows])
    await fanout.insert(conn, new_events, deliveries)
    bodies = _bodies(new_events, deliveries)
    await _insert_keys_postgres(conn, new_events, bodies, decision.reclaim, cutoff)
    return _outcome(decision, bodies, len(deliveries))


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
