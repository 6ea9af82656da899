"""The ingest transaction: events, their delivery rows and their idempotency
keys, for many requests at once (group commit), all or nothing per request.
Which subscriptions an event goes to, and the inserts of the events and their
deliveries, are :mod:`app.store.fanout`'s; this module owns the keys.

Idempotency keys are resolved in two phases: first read what is already
remembered and decide every item (new, replay, reused key:
:func:`app.domain.idempotency.decide`); then write, all or nothing. A key
another process commits between the two phases (PostgreSQL only; SQLite has
one writer, and both phases are one transaction on it) makes the write fail
as a whole (a unique violation), and the flush is tried again (:class:`KeyRace`),
when the first phase will see it.

Each dialect has its own I/O around the one decision. On SQLite the whole
transaction is one call on the writer's thread (:func:`app.store.driver.sqlite_write`);
on PostgreSQL it is two statements, a read and a write, its rows as arrays.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain import idempotency
from app.domain.events import NewEvent, accepted_body
from app.domain.idempotency import Decision, ScopedKey, StoredKey, UnitResult
from app.store import driver, fanout, schema
from app.store.database import Database, translate_errors
from app.store.lines import lines_of, lock_lines
from app.store.notify import CHANNEL

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
            return await _ingest_postgres(db, units, cutoff)
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


# -- PostgreSQL: one read and one write ---------------------------------------
#
# Every round trip of a flush waits its turn on the event loop, which under
# delivery load is busy (BENCHMARKS.md, "Fairness between tenants"), so the
# flush is two statements, rendered once and run through exec_driver_sql
# (app.store.driver says why), each its own transaction: no BEGIN, no COMMIT.
#
# The read: the stored keys among the flush's (tenants and keys apart, as on
# SQLite) and the subscribers of its tenants, in the same six columns (a
# subscriber's row has no created_at; a key's always has one).
_PG_READ = f"""
    {_SELECT_KEYS} WHERE tenant_id = ANY($1::text[]) AND key = ANY($2::text[])
    UNION ALL
    SELECT tenant_id, id, event_types, ordering, filter, NULL
    FROM ({fanout.SELECT_SUBSCRIBERS.format(tenants="(SELECT unnest($3::text[]))")}) AS s
"""
# The write: the events and their deliveries (fanout.PG_INGEST_INSERTS, $1-$22),
# the expired keys being reclaimed deleted ($23-$26: tenants, keys, the pairs
# as tenant, unit separator, key, which alone index no row, and the cutoff),
# then the new keys ($27-$33), in key order as every flush inserts them (two flushes
# never wait for each other's keys crosswise). The keys' insert waits for the
# delete (its condition reads the delete's rows), so a reclaimed key's old row
# is gone when its new one goes in. A key another transaction committed since
# the read is a unique violation: the statement fails whole, nothing of it is
# stored, and the flush is tried again (KeyRace), when the read will see it.
# The workers are woken at commit, if there are deliveries.
_PG_WRITE = f"""
    WITH {fanout.PG_INGEST_INSERTS}, reclaimed AS (
        DELETE FROM idempotency_keys
        WHERE tenant_id = ANY($23::text[]) AND key = ANY($24::text[])
          AND tenant_id || chr(31) || key = ANY($25::text[]) AND created_at < $26
        RETURNING 1
    ), new_keys AS (
        INSERT INTO idempotency_keys ({_KEY_COLUMNS})
        SELECT {_KEY_COLUMNS} FROM unnest(
            $27::text[], $28::text[], $29::text[], $30::int[], $31::text[], $32::timestamptz[],
            $33::text[]) WITH ORDINALITY AS k({_KEY_COLUMNS}, n)
        WHERE (SELECT count(*) FROM reclaimed) >= 0
        ORDER BY n
    )
    SELECT pg_notify('{CHANNEL}', '') WHERE cardinality($11::text[]) > 0
"""


@asynccontextmanager
async def _autocommit(db: Database) -> AsyncIterator[AsyncConnection]:
    """A connection on which every statement is its own transaction."""
    with translate_errors():
        async with db.writer.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn


async def _ingest_postgres(
    db: Database, units: Sequence[Sequence[NewEvent]], cutoff: datetime
) -> IngestOutcome:
    keys = idempotency.keys(units)
    params = [sorted({t for t, _ in keys}), [k for _, k in keys], _tenants(units)]
    async with _autocommit(db) as conn:
        rows = await driver.fetch_all(conn, _PG_READ, params)
    stored = _stored((r for r in rows if r[5] is not None), set(keys))
    decision = idempotency.decide(units, stored, cutoff)
    new_events = decision.new_events
    if not new_events:
        return _outcome(decision, {}, 0)
    subscribers = sorted(
        (fanout.subscriber((r[1], r[2], r[3], r[0], r[4])) for r in rows if r[5] is None),
        key=lambda s: s.id,
    )
    deliveries = fanout.fan_out(new_events, subscribers)
    bodies = _bodies(new_events, deliveries)
    params = _write_params(new_events, deliveries, bodies, decision.reclaim, cutoff)
    lines = lines_of(deliveries)
    try:
        if lines:
            # The lines' locks in a statement of their own, so that the write's
            # snapshot, which decides which new deliveries head their lines,
            # sees every delivery that left them before (app.store.lines).
            async with db.write() as conn:
                await lock_lines(conn, lines)
                await driver.fetch_all(conn, _PG_WRITE, params)
        else:
            async with _autocommit(db) as conn:
                await driver.fetch_all(conn, _PG_WRITE, params)
    except IntegrityError as exc:
        if _key_taken(exc):
            raise KeyRace() from exc
        raise
    return _outcome(decision, bodies, len(deliveries))


def _write_params(
    new_events: list[NewEvent],
    deliveries: list[dict[str, object]],
    bodies: dict[str, str],
    reclaim: list[ScopedKey],
    cutoff: datetime,
) -> list[Any]:
    keyed = _keyed(new_events)
    rows = [
        (e.idempotency_key, e.fingerprint, e.id, 202, bodies[e.id], e.received_at, e.tenant_id)
        for e in keyed
    ]
    return [
        *fanout.pg_ingest_arrays(new_events, deliveries),
        sorted({t for t, _ in reclaim}),
        [k for _, k in reclaim],
        [f"{t}\x1f{k}" for t, k in reclaim],
        cutoff,
        *driver.columns(rows, 7),
    ]


def _key_taken(exc: IntegrityError) -> bool:
    """The unique violation is on an idempotency key (any other is a fault)."""
    cause = getattr(exc.orig, "__cause__", None) or exc.orig
    return (
        getattr(cause, "sqlstate", None) == "23505"
        and getattr(cause, "table_name", None) == "idempotency_keys"
    )
