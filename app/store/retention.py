"""Pruning: succeeded deliveries, finished events and expired idempotency keys.

Each statement deletes a small batch in its own short transaction, so ingest
(on SQLite, the one writer) waits at most one batch. An event stays while any
of its deliveries is pending, in flight or dead; dead letters stay until they
are redriven or discarded.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store import driver
from app.store.database import Database, translate_errors
from app.store.schema import UTCDateTime, sqlite_timestamp, stored_utc

BATCH = 500
PRUNE_LOCK = 0x65767072756E65  # one pruner at a time on PostgreSQL


# Each batch is found by walking an index from its oldest row and deleted by
# primary key. On PostgreSQL ``= ANY(ARRAY(…))`` keeps the planner from hashing
# the whole table for an ``IN (subquery)``, and the LIMIT is written as a
# number, which a generic plan can weigh (a parameter is guessed at a tenth of
# the table). So no pass reads a table whole, whatever the statistics say.
#
# Old events that must stay (a dead letter, a pending delivery) are walked
# past, not deleted: each batch of events starts where the last one ended
# (``:after``), so a pass walks them once. ``OFFSET 0`` keeps their check a
# probe of the deliveries' event index per event: as an anti-join, a planner
# that misjudges the table sizes would compare every event with every
# unfinished delivery.
#
# SQLite, without statistics, walked the (status, subscription_id) index for
# every succeeded delivery and sorted them all, twice a batch (120-190 ms a
# pass at 150,000, the writer held all along): it is told the partial index
# of succeeded deliveries by completion time.
_SQLITE_SUCCEEDED_INDEX = "INDEXED BY ix_deliveries_succeeded"

# Attempts have no foreign key to their delivery (migration 0010): a batch of
# deliveries, or of events with theirs, takes its deliveries' attempts with it,
# in the same transaction. PostgreSQL: one statement, the batch found once (a
# CTE) and its attempts deleted in another; SQLite: the attempts' statement
# first, over the same batch (its one writer holds the database between the
# two, so both find the same rows).
_BATCHES = {
    "deliveries": (
        "seq",
        """
        SELECT {column} FROM deliveries {succeeded_index}
        WHERE status = 'succeeded' AND completed_at < :cutoff
        ORDER BY completed_at
        """,
    ),
    "events": (
        "seq",
        """
        SELECT ev.{column} FROM events ev
        WHERE ev.received_at < :cutoff AND ev.received_at >= :after
          AND NOT EXISTS (
            SELECT 1 FROM deliveries d
            WHERE d.event_id = ev.id
              AND NOT (d.status = 'discarded'
                       OR (d.status = 'succeeded' AND d.completed_at < :cutoff))
            LIMIT 1 OFFSET 0)
        ORDER BY ev.received_at
        """,
    ),
    # The primary key is (tenant_id, key): a batch's keys and their tenants,
    # both found on the created_at index, and only expired rows deleted.
    "idempotency_keys": (
        "key",
        "SELECT {column} FROM idempotency_keys WHERE created_at < :cutoff ORDER BY created_at",
    ),
}
# The deliveries whose attempts go with a batch, given the batch's IDs.
_ATTEMPTS_OF = {
    "deliveries": "{ids}",
    "events": "SELECT d.id FROM deliveries d WHERE d.event_id {among_ids}",
}
_OLDEST = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache
def _delete_batch(table: str, dialect: str, batch: int) -> tuple[TextClause, ...]:
    """:func:`_delete_batch_sql`'s statements with their times bound (SQLAlchemy)."""
    times = [bindparam(name, type_=UTCDateTime()) for name in ("cutoff", "after")]
    return tuple(
        text(sql).bindparams(*times[: 2 if table == "events" else 1])
        for sql in _delete_batch_sql(table, dialect, batch)
    )


@lru_cache
def _delete_batch_sql(table: str, dialect: str, batch: int) -> tuple[str, ...]:
    """The statements that delete one batch, in order, in one transaction; the
    last one returns a row per deleted row."""
    column, oldest = _BATCHES[table]
    pg = dialect == "postgresql"
    hint = "" if pg else _SQLITE_SUCCEEDED_INDEX

    def rows(column: str) -> str:
        return f"{oldest.format(column=column, succeeded_index=hint)} LIMIT {int(batch)}"

    def among(rows: str) -> str:
        return f"= ANY(ARRAY({rows}))" if pg else f"IN ({rows})"

    reached = "received_at" if table == "events" else "NULL"
    if table == "idempotency_keys":
        which = f"{among(rows(column))} AND tenant_id {among(rows('tenant_id'))}"
        statements = [
            f"DELETE FROM {table} WHERE {column} {which} AND created_at < :cutoff "
            f"RETURNING {reached}"
        ]
    elif pg:
        ids = "SELECT id FROM batch"
        attempts = _ATTEMPTS_OF[table].format(ids=ids, among_ids=among(ids))
        statements = [
            f"""WITH batch AS MATERIALIZED ({rows("seq, id")}),
            gone AS (DELETE FROM attempts WHERE delivery_id {among(attempts)})
            DELETE FROM {table} WHERE seq {among("SELECT seq FROM batch")} RETURNING {reached}"""
        ]
    else:
        ids = rows("id")
        attempts = _ATTEMPTS_OF[table].format(ids=ids, among_ids=among(ids))
        statements = [
            f"DELETE FROM attempts WHERE delivery_id {among(attempts)}",
            f"DELETE FROM {table} WHERE {column} {among(rows(column))} RETURNING {reached}",
        ]
    return tuple(statements)


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int
    events: int
    idempotency_keys: int


async def prune(
    db: Database, *, cutoff: datetime, keys_cutoff: datetime, batch: int = BATCH
) -> Pruned:
    return Pruned(
        deliveries=await _drain(db, "deliveries", cutoff, batch),
        events=await _drain(db, "events", cutoff, batch),
        idempotency_keys=await _drain(db, "idempotency_keys", keys_cutoff, batch),
    )


async def _drain(db: Database, table: str, cutoff: datetime, batch: int) -> int:
    params: dict[str, datetime] = {"cutoff": cutoff}
    if table == "events":
        params["after"] = _OLDEST
    total = 0
    while True:
        reached = await _delete_one_batch(db, table, batch, params)
        total += len(reached)
        if len(reached) < batch:
            return total
        if table == "events":
            params["after"] = max(stored_utc(r) or _OLDEST for r in reached)
        await asyncio.sleep(0.01)  # let waiting writers in between batches


async def _delete_one_batch(
    db: Database, table: str, batch: int, params: dict[str, datetime]
) -> list[object]:
    """Delete one batch in a transaction; what the last statement returned per
    deleted row (nothing on PostgreSQL when another process is pruning). On
    SQLite in one hand-off to the writer's thread: through the writer engine
    the turn was held over a round of the busy worker's event loop for every
    statement, and an ingest flush waited for all of them (up to 100 ms every
    retention pass, tenants fairness run)."""
    if db.sqlite_writer is not None:
        *first_sql, last_sql = _delete_batch_sql(table, db.dialect, batch)
        stored = {name: sqlite_timestamp(moment) for name, moment in params.items()}

        def delete(conn: sqlite3.Connection) -> list[object]:
            for sql in first_sql:
                conn.execute(sql, stored)
            return [row[0] for row in conn.execute(last_sql, stored).fetchall()]

        return await driver.sqlite_write(db, delete)
    *first, last = _delete_batch(table, db.dialect, batch)
    async with db.write() as conn:
        if not await _try_lock(conn):
            return []
        for statement in first:
            await conn.execute(statement, params)
        return [r[0] for r in await conn.execute(last, params)]


async def _try_lock(conn: AsyncConnection) -> bool:
    result = await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({PRUNE_LOCK})"))
    return bool(result.scalar())


_CHURNING = ("deliveries", "attempts", "events", "idempotency_keys")
_CHURNING_TABLES = ", ".join(_CHURNING)
# Small and rarely written, so autovacuum (when on) may never analyze them, but
# hot statements join them: without statistics PostgreSQL guesses their size,
# and a claim planned on that guess of the subscriptions sorted the whole
# backlog (13-19 ms a claim at 20,000 pending) instead of walking the claim index.
_JOINED_TABLES = "subscriptions, tenants"


# A manual VACUUM runs flat out, unlike autovacuum's, which rests 2 ms after
# every 200 units of work (``autovacuum_vacuum_cost_delay``): over the
# deliveries of a loaded installation it took a core for hundreds of ms, while
# the worker's cycles and ingest's commits waited for one. The pass vacuums at
# autovacuum's pace instead: it takes longer and leaves them the cores. (Should
# the VACUUM fail, its connection keeps the setting, which paces only VACUUM and
# ANALYZE.)
VACUUM_COST_DELAY = "2ms"


async def refresh_statistics(db: Database) -> None:
    """After pruning: keep the planners' picture of the tables true.

    PostgreSQL: analyze the tables that churn and make the deleted rows' space
    reusable at once (autovacuum would get there, if it is on, but under steady
    churn the tables would grow in the meantime), and analyze the small tables
    the hot statements join.

    SQLite plans from ``sqlite_stat1`` alone, never from a table's real size,
    so statistics gathered while a table was small would keep choosing scans
    as it grows. Without them SQLite takes every table as large, which is what
    every hot statement is written for (tests/integration/test_hot_plans.py);
    so eventrelay keeps none, and drops any an ``ANALYZE`` left behind.
    """
    if db.sqlite_writer is not None:
        await driver.sqlite_write(db, _drop_sqlite_statistics)
        return
    with translate_errors():
        async with db.writer.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text(f"SET vacuum_cost_delay = '{VACUUM_COST_DELAY}'"))
            await autocommit.execute(text(f"VACUUM (ANALYZE) {_CHURNING_TABLES}, {_JOINED_TABLES}"))
            await autocommit.execute(text("RESET vacuum_cost_delay"))


# PostgreSQL's autoanalyze, which eventrelay does not rely on (the server may
# run without autovacuum), analyzes a table once its rows changed since the
# last analyze pass 50 plus a tenth of its size. Statistics that old misled
# every statement that reads a table that grew meanwhile: a tenant that began
# sending after the last analyze had its idempotency lookups walk all its keys
# (40-100 ms a flush at 245,000, against a millisecond), and the claim read the
# deliveries whole, until the retention job's next pass analyzed them.
#
# What counts here is the table's size, not every change: a table is stale once
# its live rows (``n_live_tup``, kept by inserts and deletes) are further than
# a tenth plus STALE_FLOOR from the size its last analyze found (``reltuples``).
# The deliveries' status changes (two or three per delivery) would otherwise
# have it analyzed every few seconds under a steady load: 0.2-0.4 s of a core
# each time, while the worker and ingest wait for it. The retention job's pass
# (:func:`refresh_statistics`, every minute by default) analyzes every table
# anyway, so statistics never lag the rows' states by more than one pass.
STALE_FRACTION, STALE_FLOOR = 0.1, 1000
STATISTICS_LOCK = 0x65767374617473  # one analyzer at a time
_STALE_TABLES = text(
    f"""
    SELECT t.relname FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid
    WHERE t.schemaname = current_schema()
      AND t.relname IN ('{"', '".join(_CHURNING)}')
      AND abs(t.n_live_tup - greatest(c.reltuples, 0))
          > :floor + :fraction * greatest(c.reltuples, 0)
    ORDER BY t.relname
"""
)


async def analyze_stale_tables(db: Database) -> list[str]:
    """PostgreSQL: analyze each table that churns whose size moved by more
    than ``STALE_FRACTION`` (plus ``STALE_FLOOR`` rows) since it was last
    analyzed; the tables analyzed. One process at a time (the others skip);
    nothing on SQLite (see :func:`refresh_statistics`)."""
    if db.is_sqlite:
        return []
    params = {"floor": STALE_FLOOR, "fraction": STALE_FRACTION}
    async with db.read() as conn:
        stale = [str(name) for (name,) in await conn.execute(_STALE_TABLES, params)]
    if not stale:
        return []
    async with db.write() as conn:
        locked = await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({STATISTICS_LOCK})"))
        if not locked.scalar():
            return []
        await conn.execute(text(f"ANALYZE {', '.join(stale)}"))
    return stale


_SQLITE_STATISTICS = (
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'sqlite_stat[0-9]'"
)


def _drop_sqlite_statistics(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute(_SQLITE_STATISTICS).fetchall():
        conn.execute(f'DROP TABLE "{name}"')
