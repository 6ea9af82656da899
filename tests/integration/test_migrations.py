"""Alembic head produces exactly the tables the models declare, on both databases."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from app.store import schema
from app.store import subscriptions as subscription_store
from app.store.database import open_database
from app.store.migrations import alembic_config, head_revision, upgrade_head
from app.store.schema import metadata
from tests.integration.conftest import DeliveryKit


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def _inspect(url: str) -> tuple[str | None, list[Any]]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_revision), await conn.run_sync(_differences)
    finally:
        await engine.dispose()


async def test_head_matches_the_models(database_url: str) -> None:
    revision, differences = await _inspect(database_url)
    assert revision == head_revision()
    assert differences == []

    # Upgrading an up-to-date database changes nothing. upgrade_head runs its
    # own event loop, so it cannot run on this one.
    await asyncio.to_thread(upgrade_head, database_url)
    assert await _inspect(database_url) == (head_revision(), [])


async def test_widening_the_secret_columns_keeps_subscriptions_and_their_deliveries(
    empty_database_url: str,
) -> None:
    """0005 changes the type of two subscription columns; on SQLite that copies
    the table, which must keep its rows, and the deliveries' foreign key to it."""
    url = empty_database_url
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0004")
    # Rows written in the 0004 schema's own columns (today's store writes more).
    now = datetime.now(UTC)
    secret = "whsec_" + "A" * 43 + "="
    sub = {
        "id": "sub_01J00000000000000000000000",
        "url": "http://8.8.8.8/hooks",
        "event_types": '["*"]',
        "secret": secret,
        "headers": "{}",
        "ordering": "key",
        "on_dead_letter": "park",
        "max_in_flight": 8,
        "status": "active",
        "created_at": now,
        "updated_at": now,
    }
    event = {
        "id": "evt_01J00000000000000000000000",
        "type": "kept",
        "data": "{}",
        "received_at": now,
    }
    delivery = {
        "id": "dlv_01J00000000000000000000000",
        "event_id": event["id"],
        "subscription_id": sub["id"],
        "event_type": "kept",
        "status": "pending",
        "ready": True,
        "next_attempt_at": now,
        "created_at": now,
    }
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            for table, row in (
                (schema.subscriptions, sub),
                (schema.events, event),
                (schema.deliveries, delivery),
            ):
                await conn.execute(table.insert().values({table.c[k]: v for k, v in row.items()}))
    finally:
        await engine.dispose()

    await asyncio.to_thread(upgrade_head, url)
    db = open_database(url)
    try:
        kit = DeliveryKit(db)
        kept = await subscription_store.get(db, "default", str(sub["id"]))
        assert kept is not None
        assert kept.secret.open() == secret
        assert (kept.url, kept.created_at) == (sub["url"], now)
        assert len(await kit.deliveries_of(str(event["id"]))) == 1
        async with db.write() as conn:
            assert await subscription_store.remove(conn, "default", str(sub["id"]))
        assert await kit.deliveries_of(str(event["id"])) == []  # the cascade still holds
    finally:
        await db.dispose()
