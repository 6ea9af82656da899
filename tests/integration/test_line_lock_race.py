"""PostgreSQL: a delivery added to a line while the worker's outcome write waits
for that line's lock is still readied once the line's head finishes.

The outcome write takes the line locks inside its own statement, so its
snapshot predates them: it can miss a delivery that another transaction added
to the line (not ready: the head was in flight) and committed while the
outcome write waited. The cycle's claim readies the heads of the lines the
outcomes left again, with a snapshot taken after the locks."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from app.store import deliveries as delivery_store
from app.store import lines
from app.store.work import ClaimRequest, Completion
from tests.integration.conftest import LEASE, DeliveryKit

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

_WAITING = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def test_a_delivery_added_while_the_outcome_waited_for_its_line_is_readied(
    kit: DeliveryKit,
) -> None:
    sub = await kit.subscription(ordering="key", event_types=["t"])
    (first,) = await kit.events(("t", "k1"))
    (head,) = await kit.claim()
    assert head.event_id == first.id
    # An event the subscription does not match: its delivery is added by hand below.
    (second,) = await kit.events(("other", "k1"))

    now = datetime.now(UTC)
    done = Completion(head, "worker-a", "succeeded", now, 2, 200, None, "ok", None, now)
    request = ClaimRequest("worker-a", now + timedelta(seconds=1), now + LEASE, 10)

    async with kit.db.write() as conn:
        # Another transaction adds to the line and holds its lock; the head is
        # in flight, so the new delivery is not ready.
        row = lines.delivery_row("default", second.id, "t", "k1", sub.id, True, now)
        await lines.add_deliveries(conn, [row])
        assert row["ready"] is False
        cycle = asyncio.create_task(
            delivery_store.complete_and_claim(kit.db, [done], (), request, now)
        )
        # The outcome write has started (its snapshot taken) and waits for the lock.
        deadline = time.monotonic() + 10
        while True:
            async with kit.db.read() as probe:
                if (await probe.execute(text(_WAITING))).scalar():
                    break
            assert not cycle.done(), cycle
            assert time.monotonic() < deadline, "the outcome write never waited for the line"
            await asyncio.sleep(0.02)
    claimed = await asyncio.wait_for(cycle, 10)

    assert (await kit.delivery(head.id))["status"] == "succeeded"
    added = await kit.delivery(str(row["id"]))
    assert (added["status"], added["ready"]) == ("pending", True)
    # This cycle's claim could not take it (not ready in its snapshot); the next one does.
    assert [c.delivery.id for c in claimed] == []
    assert [c.id for c in await kit.claim()] == [row["id"]]
