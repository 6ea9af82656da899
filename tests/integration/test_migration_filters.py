"""Migration 0004 (content filters) on both databases: a subscription stored by
the release before it keeps every field and matches every event; the
downgrade takes the column away again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from alembic import command
from sqlalchemy import Connection, inspect

from app.store import schema
from app.store import subscriptions as subscription_store
from app.store.database import open_database
from app.store.migrations import alembic_config, upgrade_head

BEFORE_FILTERS = "0003"


def _columns(conn: Connection) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns("subscriptions")}


async def test_filters_migration_keeps_existing_subscriptions(empty_database_url: str) -> None:
    database_url = empty_database_url
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), BEFORE_FILTERS)
    db = open_database(database_url)
    try:
        async with db.read() as conn:
            assert "filter" not in await conn.run_sync(_columns)
        now = datetime.now(UTC)
        row: dict[str, Any] = {
            "id": "sub_01J00000000000000000000000",
            "url": "http://8.8.8.8/hooks",
            "description": "from before filters",
            "event_types": orjson.dumps(["order.*"]).decode(),
            "secret": "whsec_" + "A" * 43 + "=",
            "headers": orjson.dumps({"X-Team": "billing"}).decode(),
            "ordering": "key",
            "on_dead_letter": "skip",
            "max_in_flight": 8,
            "status": "active",
            "created_at": now,
            "updated_at": now,
        }
        columns = [c for c in schema.subscriptions.c if c.name in row]
        async with db.write() as conn:
            await conn.execute(
                schema.subscriptions.insert().values({c: row[c.name] for c in columns})
            )
    finally:
        await db.dispose()

    await asyncio.to_thread(upgrade_head, database_url)
    db = open_database(database_url)
    try:
        kept = await subscription_store.get(db, "default", row["id"])
        assert kept is not None
        assert (kept.url, kept.description, kept.event_types, kept.headers, kept.max_in_flight) == (
            "http://8.8.8.8/hooks",
            "from before filters",
            ["order.*"],
            {"X-Team": "billing"},
            8,
        )
        assert kept.filter is None
    finally:
        await db.dispose()
