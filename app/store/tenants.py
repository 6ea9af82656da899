"""Tenants: the rows, and the removal of a deleted tenant's data in bounded batches.

A deleted tenant's row stays, ``status = 'deleting'``, until everything it
owned is gone: its ID stays taken meanwhile, and a removal cut short by a crash
is found again and resumed by the next pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Table, delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import Conflict, NotFound
from app.store import schema
from app.store.database import Database

t = schema.tenants
ACTIVE = "active"
DELETING = "deleting"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    metadata: dict[str, str]
    ingest_rate_per_second: float | None
    max_subscriptions: int | None
    status: str
    created_at: datetime
    updated_at: datetime


def _tenant(row: Row[Any]) -> Tenant:
    r = row._mapping
    return Tenant(
        r["id"],
        r["name"],
        orjson.loads(r["metadata"]),
        r["ingest_rate_per_second"],
        r["max_subscriptions"],
        r["status"],
        r["created_at"],
        r["updated_at"],
    )


def _to_row(values: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(values)
    if "metadata" in row:
        row["metadata"] = orjson.dumps(row["metadata"] or {}).decode()
    return row


async def create(db: Database, values: Mapping[str, Any]) -> Tenant:
    try:
        async with db.write() as conn:
            await conn.execute(t.insert().values(**_to_row(values)))
            row = (await conn.execute(select(t).where(t.c.id == values["id"]))).one()
    except sa_exc.IntegrityError:
        raise Conflict(f"the tenant ID {values['id']} is taken") from None
    return _tenant(row)


async def get(db: Database, tenant_id: str) -> Tenant | None:
    """The tenant, active or being removed (None: no such row)."""
    async with db.read() as conn:
        row = (await conn.execute(select(t).where(t.c.id == tenant_id))).first()
    return _tenant(row) if row else None


async def list_page(
    db: Database, *, after_id: str | None, limit: int
) -> tuple[list[Tenant], str | None]:
    query = select(t).where(t.c.status == ACTIVE).order_by(t.c.id).limit(limit + 1)
    if after_id is not None:
        query = query.where(t.c.id > after_id)
    async with db.read() as conn:
        page = [_tenant(r) for r in await conn.execute(query)]
    if len(page) > limit:
        return page[:limit], page[limit - 1].id
    return page, None


async def patch(db: Database, tenant_id: str, values: Mapping[str, Any]) -> Tenant | None:
    async with db.write() as conn:
        result = await conn.execute(
            update(t).where(t.c.id == tenant_id, t.c.status == ACTIVE).values(**_to_row(values))
        )
        if not result.rowcount:
            return None
        row = (await conn.execute(select(t).where(t.c.id == tenant_id))).one()
    return _tenant(row)


async def check_room(conn: AsyncConnection, tenant_id: str) -> None:
    """Within the transaction that creates a subscription: 409 when the tenant
    has its ``max_subscriptions``. The tenant's row is locked (PostgreSQL; SQLite
    has one writer), so two creations cannot both take the last place."""
    query = select(t.c.max_subscriptions).where(t.c.id == tenant_id, t.c.status == ACTIVE)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"no tenant {tenant_id}")
    limit = row[0]
    if limit is None:
        return
    s = schema.subscriptions
    count = select(func.count()).select_from(s).where(s.c.tenant_id == tenant_id)
    if int((await conn.execute(count)).scalar_one()) >= limit:
        raise Conflict(f"tenant {tenant_id} has its maximum of {limit} subscriptions")


async def mark_deleting(db: Database, tenant_id: str, now: datetime) -> bool:
    """One short transaction: the tenant disappears (its tokens revoked, its
    subscriptions disabled so no worker claims for them). False when there is
    no such active tenant."""
    async with db.write() as conn:
        result = await conn.execute(
            update(t)
            .where(t.c.id == tenant_id, t.c.status == ACTIVE)
            .values(status=DELETING, updated_at=now)
        )
        if not result.rowcount:
            return False
        tok = schema.tokens
        await conn.execute(
            update(tok)
            .where(tok.c.tenant_id == tenant_id, tok.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        s = schema.subscriptions
        await conn.execute(
            update(s)
            .where(s.c.tenant_id == tenant_id)
            .values(status="disabled", disabled_reason="tenant deleted", updated_at=now)
        )
    return True


async def deleting(db: Database) -> list[str]:
    async with db.read() as conn:
        rows = await conn.execute(select(t.c.id).where(t.c.status == DELETING).order_by(t.c.id))
        return [r[0] for r in rows]


async def remove_batch(db: Database, tenant_id: str, batch: int) -> int:
    """One bounded transaction of a deleted tenant's removal: up to ``batch``
    events with their deliveries and attempts, else keys, else subscriptions,
    else tokens, else the tenant's row itself. Returns the rows removed (0: done)."""
    async with db.write() as conn:
        for step in (_remove_events, _remove_keys, _remove_subscriptions, _remove_tokens):
            removed = await step(conn, tenant_id, batch)
            if removed:
                return removed
        await conn.execute(delete(t).where(t.c.id == tenant_id, t.c.status == DELETING))
    return 0


async def _remove_events(conn: AsyncConnection, tenant_id: str, batch: int) -> int:
    e, d, a = schema.events, schema.deliveries, schema.attempts
    ids = [
        r[0]
        for r in await conn.execute(
            select(e.c.id).where(e.c.tenant_id == tenant_id).order_by(e.c.seq).limit(batch)
        )
    ]
    if not ids:
        return 0
    deliveries = select(d.c.id).where(d.c.event_id.in_(ids)).scalar_subquery()
    await conn.execute(delete(a).where(a.c.delivery_id.in_(deliveries)))
    await conn.execute(delete(d).where(d.c.event_id.in_(ids)))
    await conn.execute(delete(e).where(e.c.id.in_(ids)))
    return len(ids)


async def _remove_rows(
    conn: AsyncConnection, table: Table, key: str, tenant_id: str, batch: int
) -> int:
    """Up to ``batch`` of the tenant's rows of ``table``, found and deleted by ``key``."""
    column = table.c[key]
    found = select(column).where(table.c.tenant_id == tenant_id).order_by(column).limit(batch)
    keys = [r[0] for r in await conn.execute(found)]
    if keys:
        await conn.execute(delete(table).where(table.c.tenant_id == tenant_id, column.in_(keys)))
    return len(keys)


async def _remove_keys(conn: AsyncConnection, tenant_id: str, batch: int) -> int:
    return await _remove_rows(conn, schema.idempotency_keys, "key", tenant_id, batch)


async def _remove_subscriptions(conn: AsyncConnection, tenant_id: str, batch: int) -> int:
    # Their deliveries went with the tenant's events: a subscription receives
    # only its own tenant's events.
    return await _remove_rows(conn, schema.subscriptions, "id", tenant_id, batch)


async def _remove_tokens(conn: AsyncConnection, tenant_id: str, batch: int) -> int:
    return await _remove_rows(conn, schema.tokens, "id", tenant_id, batch)
