"""API tokens: stored as digests, revoked by timestamp."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from app.domain.tokens import Scope
from app.store import schema
from app.store.database import Database


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    scope: Scope
    tenant_id: str | None = None  # None: a global token


async def create_token(
    db: Database,
    *,
    token_id: str,
    token_hash: str,
    scope: Scope,
    description: str | None,
    now: datetime,
    tenant_id: str | None = None,
) -> None:
    async with db.write() as conn:
        await conn.execute(
            schema.tokens.insert().values(
                id=token_id,
                token_hash=token_hash,
                scope=scope.value,
                description=description,
                created_at=now,
                tenant_id=tenant_id,
            )
        )


async def find_token(db: Database, token_hash: str) -> TokenRecord | None:
    t = schema.tokens
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(t.c.id, t.c.scope, t.c.tenant_id).where(
                    t.c.token_hash == token_hash, t.c.revoked_at.is_(None)
                )
            )
        ).first()
    return TokenRecord(row.id, Scope(row.scope), row.tenant_id) if row else None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    scope: Scope
    description: str | None
    created_at: datetime
    tenant_id: str | None  # None: a global token


async def list_active(
    db: Database, *, tenant_id: str | None, after_id: str | None, limit: int
) -> tuple[list[TokenInfo], str | None]:
    """Active tokens by ID (never their digests), and the ID to continue after;
    with ``tenant_id`` only that tenant's."""
    t = schema.tokens
    query = select(t.c.id, t.c.scope, t.c.description, t.c.created_at, t.c.tenant_id).where(
        t.c.revoked_at.is_(None)
    )
    if tenant_id is not None:
        query = query.where(t.c.tenant_id == tenant_id)
    if after_id is not None:
        query = query.where(t.c.id > after_id)
    async with db.read() as conn:
        rows = list(await conn.execute(query.order_by(t.c.id).limit(limit + 1)))
    page = [
        TokenInfo(r.id, Scope(r.scope), r.description, r.created_at, r.tenant_id)
        for r in rows[:limit]
    ]
    return page, (page[-1].id if len(rows) > limit else None)


async def revoke_token(
    db: Database, token_id: str, now: datetime, tenant_id: str | None = None
) -> bool:
    """Revoke an active token; with ``tenant_id``, only one of that tenant's."""
    t = schema.tokens
    which = [t.c.id == token_id, t.c.revoked_at.is_(None)]
    if tenant_id is not None:
        which.append(t.c.tenant_id == tenant_id)
    async with db.write() as conn:
        result = await conn.execute(update(t).where(*which).values(revoked_at=now))
    return bool(result.rowcount)


async def count_active_tokens(db: Database) -> int:
    t = schema.tokens
    async with db.read() as conn:
        result = await conn.execute(
            select(func.count()).select_from(t).where(t.c.revoked_at.is_(None))
        )
        return int(result.scalar_one())
