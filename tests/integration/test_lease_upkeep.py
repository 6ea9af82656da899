"""PostgreSQL: the lease upkeep (renewal, reaping) never waits for a delivery
another transaction holds, such as the worker's outcome write on its other
connection. Waiting, it deadlocked with that write (the two took the same rows
in different orders) and held the worker's loop for PostgreSQL's
``deadlock_timeout`` before one of them failed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from app.store import leases
from tests.integration.conftest import DeliveryKit

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

# Far longer than the statements take; far shorter than waiting for the holder.
PROMPT = 5.0


async def test_renewal_skips_a_delivery_another_transaction_holds(kit: DeliveryKit) -> None:
    await kit.subscription()
    await kit.events(("t", None), ("t", None))
    held, free = await kit.claim("worker-a", limit=2)
    later = datetime.now(UTC) + timedelta(hours=1)
    async with kit.db.writer.connect() as other, other.begin():
        # As the outcome write does: the finished delivery's row, locked until it commits.
        await other.execute(
            text("UPDATE deliveries SET attempts = attempts + 1 WHERE seq = :seq"),
            {"seq": held.seq},
        )
        await asyncio.wait_for(
            leases.renew_leases(kit.db, "worker-a", [held.seq, free.seq], later), PROMPT
        )
        await other.rollback()
    assert (await kit.delivery(free.id))["lease_expires_at"] == later
    assert (await kit.delivery(held.id))["lease_expires_at"] < later, "left to its holder"


async def test_reaping_skips_a_delivery_another_transaction_holds(kit: DeliveryKit) -> None:
    await kit.subscription()
    await kit.events(("t", None), ("t", None))
    now = datetime.now(UTC) + timedelta(seconds=1)
    held, expired = await kit.claim("worker-a", at=now, limit=2, lease=timedelta(seconds=-1))
    async with kit.db.writer.connect() as other, other.begin():
        await other.execute(
            text("UPDATE deliveries SET attempts = attempts + 1 WHERE seq = :seq"),
            {"seq": held.seq},
        )
        assert await asyncio.wait_for(leases.reap_expired_leases(kit.db, now), PROMPT) == 1
        await other.rollback()
    assert (await kit.delivery(expired.id))["status"] == "pending"
    assert (await kit.delivery(held.id))["status"] == "in_flight"
    assert await leases.reap_expired_leases(kit.db, now) == 1, "reaped at the next pass"
