"""Attempts have no foreign key to their delivery (migration 0010): whatever
deletes deliveries deletes their attempts in the same transaction, on both
databases, and the upgrade keeps every attempt."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import insert, pool, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from app.store import schema
from app.store import subscriptions as subscription_store
from app.store.database import open_database
from app.store.migrations import alembic_config, upgrade_head
from app.store.work import Claimed
from tests.integration.conftest import DeliveryKit

a = schema.attempts


async def attempted(kit: DeliveryKit, subscription_id: str, status: str) -> str:
    """One event for the subscription, claimed and finished: its delivery's ID."""
    (event,) = await kit.events(("t", None))
    (claimed,) = [c for c in await kit.claim() if c.subscription_id == subscription_id]
    await kit.finish(claimed, status)
    assert claimed.event_id == event.id
    return claimed.id


async def attempted_on_the_old_schema(kit: DeliveryKit, subscription_id: str) -> str:
    """:func:`attempted` (succeeded) on a database before migration 0011, which
    today's claim cannot read (it takes parked deliveries too): the lease is
    written by hand, the outcome by the store."""
    (event,) = await kit.events(("t", None))
    d = schema.deliveries
    columns = (d.c.seq, d.c.id, d.c.event_id, d.c.subscription_id, d.c.ordering_key)
    found = d.c.event_id == event.id
    async with kit.db.write() as conn:
        row = (await conn.execute(select(*columns).where(found))).one()
        await conn.execute(update(d).where(found).values(status="in_flight", lease_owner="w"))
    claimed = Claimed(*row, attempts=0, round_attempts=0)
    assert claimed.subscription_id == subscription_id
    await kit.finish(claimed, "succeeded", owner="w")
    return claimed.id


async def all_attempts(kit: DeliveryKit) -> list[str]:
    async with kit.db.read() as conn:
        return sorted(r[0] for r in await conn.execute(select(a.c.delivery_id)))


async def test_removing_a_subscription_removes_its_deliveries_attempts(kit: DeliveryKit) -> None:
    gone = await kit.subscription(event_types=["t"])
    kept = await kit.subscription(event_types=["other"])
    first = await attempted(kit, gone.id, "succeeded")
    second = await attempted(kit, gone.id, "dead")
    (other_event,) = await kit.events(("other", None))
    (claimed,) = await kit.claim()
    await kit.finish(claimed, "succeeded")
    assert sorted([first, second, claimed.id]) == await all_attempts(kit)

    async with kit.db.write() as conn:
        # Another tenant cannot remove it, and nothing of it goes.
        assert not await subscription_store.remove(conn, "other-tenant", gone.id)
    assert sorted([first, second, claimed.id]) == await all_attempts(kit)

    async with kit.db.write() as conn:
        assert await subscription_store.remove(conn, "default", gone.id)
    assert await all_attempts(kit) == [claimed.id]
    assert [d["subscription_id"] for d in await kit.deliveries_of(other_event.id)] == [kept.id]


async def test_the_upgrade_keeps_every_attempt(empty_database_url: str) -> None:
    url = empty_database_url
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0009")
    db = open_database(url)
    try:
        kit = DeliveryKit(db)
        sub = await kit.subscription(event_types=["t"])
        delivered = await attempted_on_the_old_schema(kit, sub.id)
        before = await kit.attempts_of(delivered)
        assert len(before) == 1
    finally:
        await db.dispose()

    await asyncio.to_thread(upgrade_head, url)
    db = open_database(url)
    try:
        kit = DeliveryKit(db)
        assert await kit.attempts_of(delivered) == before
        # The worker's next outcomes write attempts as before, numbered on.
        retried = await attempted(kit, sub.id, "dead")
        assert [r["attempt"] for r in await kit.attempts_of(retried)] == [1]
        async with db.write() as conn:
            assert await subscription_store.remove(conn, "default", sub.id)
        assert await all_attempts(kit) == []
    finally:
        await db.dispose()


async def test_an_attempt_row_no_longer_needs_its_delivery(empty_database_url: str) -> None:
    """The constraint is gone on both databases (so the worker's insert checks nothing)."""
    url = empty_database_url
    await asyncio.to_thread(upgrade_head, url)
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(a).values(
                    delivery_id="dlv_nowhere",
                    attempt=1,
                    started_at=datetime.now(UTC),
                    duration_ms=1,
                )
            )
            assert (await conn.execute(select(a.c.delivery_id))).scalars().all() == ["dlv_nowhere"]
    finally:
        await engine.dispose()
