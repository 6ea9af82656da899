"""0008 (trace context) on a database that already holds events: nothing is
lost, and the new columns start empty. Both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from sqlalchemy import Connection, inspect, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.migrations import alembic_config, upgrade_head

BEFORE = "0007"  # the revision 0008 follows

INSERT_OLD_EVENT = (
    "INSERT INTO events (id, type, key, data, schema_version, occurred_at, received_at) "
    "VALUES ('evt_old', 'order.created', 'k', '{\"a\": 1}', NULL, NULL, CURRENT_TIMESTAMP)"
)


async def _run(url: str, statement: str) -> list[tuple[Any, ...]]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def _columns(url: str, table: str) -> set[str]:
    def names(conn: Connection) -> set[str]:
        return {column["name"] for column in inspect(conn).get_columns(table)}

    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(names)
    finally:
        await engine.dispose()


async def test_trace_columns_arrive_empty_and_keep_every_event(empty_database_url: str) -> None:
    database_url = empty_database_url
    # Alembic runs its own event loop, so it runs on a thread of its own.
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), BEFORE)
    assert "traceparent" not in await _columns(database_url, "events")
    await _run(database_url, INSERT_OLD_EVENT)

    await asyncio.to_thread(upgrade_head, database_url)
    rows = await _run(
        database_url, "SELECT id, type, key, data, traceparent, tracestate FROM events"
    )
    assert rows == [("evt_old", "order.created", "k", '{"a": 1}', None, None)]
