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

:func:`run_on_sqlite_thread` goes one step further for the delivery worker's
cycle, several statements and their transaction in a single hand-off.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

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


async def execute_many(conn: AsyncConnection, sql: str, rows: Sequence[Params]) -> int:
    """Run ``sql`` once per row (SQLite); returns how many rows it changed."""
    if conn.dialect.name != "sqlite":
        raise ValueError("execute_many is for SQLite; PostgreSQL takes arrays in one statement")
    driver = await _aiosqlite(conn)
    cursor = await driver.executemany(sql, rows)
    # A finished executemany holds no statement open, so the cursor needs no
    # closing round trip; sqlite3 sums the changes of every row.
    return int(cursor.rowcount)


async def run_on_sqlite_thread(conn: AsyncConnection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` with the sqlite3 connection under ``conn``, on aiosqlite's own
    thread: one hand-off for all it does.

    Each hand-off waits for the event loop to come round, which under load
    takes a millisecond or more; a worker cycle of ten statements spent most
    of its time waiting. ``work`` owns the transaction: ``conn`` must have none
    open (a plain ``connect()``), and ``work`` must end its own with COMMIT or
    ROLLBACK. aiosqlite has no public call for this, so it uses the one every
    public method goes through (``Connection._execute``); a test pins it.
    """
    if conn.dialect.name != "sqlite":
        raise ValueError("run_on_sqlite_thread is for SQLite")
    aio = await _aiosqlite(conn)
    result: T = await aio._execute(work, aio._conn)
    return result


async def _aiosqlite(conn: AsyncConnection) -> Any:
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the arrays a PostgreSQL ``unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
