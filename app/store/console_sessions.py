"""Console sessions: one row per sign-in, found by the SHA-256 of its ID."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.tokens import Scope
from app.store import schema
from app.store.database import Database

s = schema.console_sessions
t = schema.tokens


@dataclass(frozen=True, slots=True)
class StoredSession:
    token_id: str
    csrf_token: str
    tenant_id: str | None
    portal: bool
    expires_at: datetime
    scope: Scope | None  # the token's scope; None when the token is not in the table
    token_tenant_id: str | None  # the token's tenant; None for a global token


async def create(
    conn: AsyncConnection,
    *,
    id_hash: str,
    token_id: str,
    csrf_token: str,
    tenant_id: str | None,
    portal: bool,
    now: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        s.insert().values(
            id_hash=id_hash,
            token_id=token_id,
            csrf_token=csrf_token,
            tenant_id=tenant_id,
            portal=portal,
            created_at=now,
            expires_at=expires_at,
        )
    )


async def prune(conn: AsyncConnection, now: datetime) -> None:
    """Forget sessions that have expired (index-served on ``expires_at``)."""
    await conn.execute(delete(s).where(s.c.expires_at <= now))


async def find(db: Database, id_hash: str, now: datetime) -> StoredSession | None:
    """The live session with this ID hash and its token's scope if the token is
    still active; a revoked token's sessions are found with ``scope`` None."""
    query = (
        select(
            s.c.token_id,
            s.c.csrf_token,
            s.c.tenant_id,
            s.c.portal,
            s.c.expires_at,
            t.c.scope,
            t.c.revoked_at,
            t.c.tenant_id.label("token_tenant_id"),
        )
        .select_from(s.outerjoin(t, t.c.id == s.c.token_id))
        .where(s.c.id_hash == id_hash, s.c.expires_at > now)
    )
    async with db.read() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    scope = Scope(row.scope) if row.scope is not None and row.revoked_at is None else None
    return StoredSession(
        row.token_id,
        row.csrf_token,
        row.tenant_id,
        row.portal,
        row.expires_at,
        scope,
        row.token_tenant_id,
    )


async def key(db: Database, name: str, candidate: str, now: datetime) -> str:
    """The key called ``name``: the stored one, or ``candidate`` stored now. Two
    processes racing both insert-if-absent and read back the same winner."""
    k = schema.console_keys
    async with db.write() as conn:
        found = (await conn.execute(select(k.c.secret).where(k.c.name == name))).scalar()
        if found is None:
            insert = (
                sqlite_insert(k) if conn.dialect.name == "sqlite" else postgresql_insert(k)
            ).values(name=name, secret=candidate, created_at=now)
            await conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
            found = (await conn.execute(select(k.c.secret).where(k.c.name == name))).scalar_one()
    return str(found)


async def set_tenant(conn: AsyncConnection, id_hash: str, tenant_id: str | None) -> None:
    await conn.execute(s.update().where(s.c.id_hash == id_hash).values(tenant_id=tenant_id))


async def remove(conn: AsyncConnection, id_hash: str) -> None:
    await conn.execute(delete(s).where(s.c.id_hash == id_hash))
