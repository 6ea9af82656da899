"""Alembic head produces exactly the tables the models declare, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.migrations import head_revision, upgrade_head
from app.store.schema import metadata


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
