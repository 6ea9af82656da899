"""Plain SQL on the hot paths, with the fewest trips to the driver.

SQLAlchemy's compiled statements cost more CPU per event than the database
spends storing it, and on SQLite every statement through SQLAlchemy's
aiosqlite adapter is three or four hand-offs to aiosqlite's thread (cursor,
execute, fetch, close), each one a wake-up of both threads. These helpers run
pre-rendered SQL with plain tuples:

* SQLite: straight on the aiosqlite connection, inside the transaction
  SQLAlchemy began on it (``BEGIN IMMEDIATE``, see :mod:`app.store.database`):
  one hand-off per statement. sqlite3's errors are translated like
  SQLAlchemy's by :func:`app.store.database.translate_errors`.
* PostgreSQL: through ``exec_driver_sql``, so the asyncpg adapter still opens
  the transaction; the SQL is rendered once and takes arrays (``unnest``,
  ``ANY``), so a whole flush is one statement.

Parameters are in each dialect's own style: ``?`` or ``:name`` (with a mapping)
on SQLite, ``$n`` on PostgreSQL.

A transaction that runs many statements on many events' behalf (the ingest
flush, the delivery worker's cycle) goes further on SQLite: :func:`sqlite_write`
runs a whole transaction, ``BEGIN IMMEDIATE`` to ``COMMIT``, as one call on
the SQLite writer's thread (:mod:`app.store.sqlite_writer`), with a plain
sqlite3 connection. SQLAlchemy's begin and commit alone cost more CPU than the
statements of a 32-event flush, and every hand-off waits for the event loop
to come round, a millisecond or more under load (BENCHMARKS.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.database import Database, translate_errors

Params = Sequence[Any] | Mapping[str, Any]
T = TypeVar("T")


async def fetch_all(conn: AsyncConnection, sql: str, params: Params = ()) -> list[Sequence[Any]]:
    """The rows of one query (or of a statement with ``RETURNING``)."""
    if conn.dialect.name == "sqlite":
        driver = await _aiosqlite(conn)
        return list(await driver.execute_fetchall(sql, params))
    result = await conn.exec_driver_sql(
        sql, params if isinstance(params, Mapping) else tuple(params)
    )
    return list(result) if result.returns_rows else []


async def sqlite_write(
    db: Database, work: Callable[[sqlite3.Connection], T], *, urgent: bool = False
) -> T:
    """SQLite: ``work(connection)`` in a write transaction, in one hand-off.

    ``work`` runs on the SQLite writer's thread between ``BEGIN IMMEDIATE`` and
    ``COMMIT``, with its plain sqlite3 connection, and anything it raises rolls
    the transaction back (:meth:`app.store.sqlite_writer.SqliteWriter.transaction`).
    It must not touch the event loop. sqlite3's errors are translated like
    :meth:`Database.write`'s. ``urgent`` (the ingest flush) goes ahead of the
    other transactions waiting for the writer. The commit waits for the disk
    if ``db``'s commits do (:attr:`Database.durable_commits`).
    """
    if db.sqlite_writer is None:
        raise ValueError("sqlite_write is for SQLite")
    with translate_errors():
        return await db.sqlite_writer.transaction(work, urgent=urgent, durable=db.durable_commits)


SQLITE_ROWS_PER_STATEMENT = 500  # a few thousand parameters, far within SQLite's limit


def sqlite_run_rows(conn: sqlite3.Connection, template: str, rows: Sequence[Sequence[Any]]) -> int:
    """Run ``template`` over ``rows`` given as one VALUES list (its ``{rows}``),
    up to SQLITE_ROWS_PER_STATEMENT a statement; returns the rows it changed.

    For work inside :func:`sqlite_write`. ``executemany`` steps once per row,
    and sqlite3 gives up the GIL at every step and has to win it back from the
    busy event loop; one statement steps once.
    """
    return sum(conn.execute(sql, params).rowcount for sql, params in row_statements(template, rows))


def row_statements(template: str, rows: Sequence[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
    """``template``'s ``{rows}`` as VALUES lists of up to SQLITE_ROWS_PER_STATEMENT
    rows, each statement with its flat parameters."""
    for start in range(0, len(rows), SQLITE_ROWS_PER_STATEMENT):
        chunk = rows[start : start + SQLITE_ROWS_PER_STATEMENT]
        row = marks(len(chunk[0]))
        yield template.format(rows=", ".join([row] * len(chunk))), list(chain.from_iterable(chunk))


def marks(count: int) -> str:
    """``(?, ?, …)``: ``count`` positional parameters in parentheses."""
    return f"({', '.join('?' * count)})"


async def _aiosqlite(conn: AsyncConnection) -> Any:
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the arrays a PostgreSQL ``unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
