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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

Params = Sequence[Any] | Mapping[str, Any]


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


async def _aiosqlite(conn: AsyncConnection) -> Any:
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column: the arrays a PostgreSQL ``unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
