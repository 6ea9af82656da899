"""Event types and their schema versions.

A version is checked against the versions read before the write and stored
only if the type's latest version is still the one checked against: the
write locks the type's row (``FOR UPDATE`` on PostgreSQL; SQLite has one
writer) and compares. The caller checks again when it lost the race, so the
(possibly slow) compatibility check never runs inside a write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import Conflict, NotFound
from app.store import schema
from app.store.database import Database

t = schema.event_types
s = schema.event_schemas


@dataclass(frozen=True, slots=True)
class EventType:
    name: str
    description: str | None
    compatibility: str
    created_at: datetime
    latest_version: int | None


@dataclass(frozen=True, slots=True)
class StoredSchema:
    version: int
    text: str  # canonical JSON


def _with_latest() -> Select[Any]:
    latest = (
        select(func.max(s.c.version))
        .where(s.c.event_type == t.c.name)
        .scalar_subquery()
        .label("latest_version")
    )
    return select(t.c.name, t.c.description, t.c.compatibility, t.c.created_at, latest)


async def create_type(
    db: Database, *, name: str, description: str | None, compatibility: str, now: datetime
) -> EventType:
    try:
        async with db.write() as conn:
            await conn.execute(
                t.insert().values(
                    name=name, description=description, compatibility=compatibility, created_at=now
                )
            )
    except sa_exc.IntegrityError:
        raise Conflict(f"event type {name} already exists") from None
    return EventType(name, description, compatibility, now, None)


async def update_type(db: Database, name: str, changes: dict[str, Any]) -> EventType | None:
    async with db.write() as conn:
        if changes:
            await conn.execute(t.update().where(t.c.name == name).values(**changes))
        row = (await conn.execute(_with_latest().where(t.c.name == name))).first()
    return EventType(*row) if row else None


async def get_type(db: Database, name: str) -> EventType | None:
    async with db.read() as conn:
        row = (await conn.execute(_with_latest().where(t.c.name == name))).first()
    return EventType(*row) if row else None


async def list_types(
    db: Database, *, after_name: str | None, limit: int
) -> tuple[list[EventType], str | None]:
    query = _with_latest().order_by(t.c.name).limit(limit + 1)
    if after_name is not None:
        query = query.where(t.c.name > after_name)
    async with db.read() as conn:
        page = [EventType(*r) for r in await conn.execute(query)]
    if len(page) > limit:
        return page[:limit], page[limit - 1].name
    return page, None


async def get_schema(db: Database, name: str, version: int | None) -> StoredSchema | None:
    """Version ``version`` of ``name``'s schema, or its latest when ``version`` is None."""
    query = select(s.c.version, s.c.schema).where(s.c.event_type == name)
    if version is None:
        query = query.order_by(s.c.version.desc()).limit(1)
    else:
        query = query.where(s.c.version == version)
    async with db.read() as conn:
        row = (await conn.execute(query)).first()
    return StoredSchema(row.version, row.schema) if row else None


async def latest_versions(db: Database) -> dict[str, int]:
    """The latest schema version of every type that has one."""
    async with db.read() as conn:
        rows = await conn.execute(
            select(s.c.event_type, func.max(s.c.version)).group_by(s.c.event_type)
        )
        return {name: int(version) for name, version in rows}


async def versions_of(db: Database, name: str) -> list[StoredSchema]:
    """Every schema version of ``name``, oldest first."""
    async with db.read() as conn:
        rows = await conn.execute(
            select(s.c.version, s.c.schema).where(s.c.event_type == name).order_by(s.c.version)
        )
        return [StoredSchema(r.version, r.schema) for r in rows]


async def add_schema(
    db: Database, name: str, text: str, *, after: int | None, now: datetime
) -> int | None:
    """Store ``text`` as the version after ``after`` (None: the first).

    Returns the new version, or None when the type's latest version is no
    longer ``after`` (another registration came first; check again).
    """
    async with db.write() as conn:
        await _lock_type(conn, name)
        latest = (
            await conn.execute(select(func.max(s.c.version)).where(s.c.event_type == name))
        ).scalar_one_or_none()
        if latest != after:
            return None
        version = (after or 0) + 1
        await conn.execute(
            s.insert().values(event_type=name, version=version, schema=text, created_at=now)
        )
    return version


async def _lock_type(conn: AsyncConnection, name: str) -> None:
    found = await conn.execute(select(t.c.name).where(t.c.name == name).with_for_update())
    if found.first() is None:
        raise NotFound(f"no event type {name}")
