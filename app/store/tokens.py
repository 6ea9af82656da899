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


async def create_token(
    db: Database,
    *,
    token_id: str,
    token_hash: str,
    scope: Scope,
    description: str | None,
    now: datetime,
) -> None:
    async with db.write() as conn:
        await conn.execute(
            schema.tokens.insert().values(
                id=token_id,
                token_hash=token_hash,
                scope=scope.value,
                description=description,
                created_at=now,
            )
        )


async def find_token(db: Database, token_hash: str) -> TokenRecord | None:
    t = schema.tokens
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(t.c.id, t.c.scope).where(
                    t.c.token_hash == token_hash, t.c.revoked_at.is_(None)
                )
            )
        ).first()
    return TokenRecord(row.id, Scope(row.scope)) if row else None


async def revoke_token(db: Database, token_id: str, now: datetime) -> bool:
    t = schema.tokens
    async with db.write() as conn:
        result = await conn.execute(
            update(t).where(t.c.id == token_id, t.c.revoked_at.is_(None)).values(revoked_at=now)
        )
    return bool(result.rowcount)


async def count_active_tokens(db: Database) -> int:
    t = schema.tokens
    async with db.read() as conn:
        result = await conn.execute(
            select(func.count()).select_from(t).where(t.c.revoked_at.is_(None))
        )
        return int(result.scalar_one())
