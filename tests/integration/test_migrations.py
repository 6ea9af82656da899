"""Alembic head produces exactly the tables the models declare, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

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
    db = open_database(url)
    try:
        kit = DeliveryKit(db)
        sub = await kit.subscription(event_types=["*"])
        (event,) = await kit.events(("kept", None))
    finally:
        await db.dispose()

    await asyncio.to_thread(upgrade_head, url)
    db = open_database(url)
    try:
        kit = DeliveryKit(db)
        kept = await subscription_store.get(db, sub.tenant_id, sub.id)
        assert kept is not None
        assert kept.secret.open() == sub.secret.open()
        assert (kept.url, kept.created_at) == (sub.url, sub.created_at)
        assert len(await kit.deliveries_of(event.id)) == 1
        async with db.write() as conn:
            assert await subscription_store.remove(conn, sub.tenant_id, sub.id)
        assert await kit.deliveries_of(event.id) == []  # the cascade still holds
    finally:
        await db.dispose()
