"""Retention on both databases: ``app.store.retention.prune`` removes succeeded
deliveries (with their attempts), finished events and expired idempotency keys
older than the cutoff, and nothing else.

README, Retention: "succeeded deliveries completed more than RETENTION_DAYS ago
(with their attempts), events received before that which have no delivery
pending, in flight or dead (with their discarded deliveries), and idempotency
keys past their TTL. Dead letters stay until they are redriven or discarded."
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, update

from app.domain.events import NewEvent
from app.store import dlq, retention, schema
from app.store.work import Claimed
from tests.integration.conftest import DeliveryKit

NOW = datetime.now(UTC)
CUTOFF = NOW - timedelta(days=7)
OLD = NOW - timedelta(days=10)
e = schema.events
d = schema.deliveries
a = schema.attempts
k = schema.idempotency_keys


async def age_event(kit: DeliveryKit, event: NewEvent, at: datetime = OLD) -> None:
    async with kit.db.write() as conn:
        await conn.execute(update(e).where(e.c.id == event.id).values(received_at=at))


async def age_completion(kit: DeliveryKit, delivery_id: str, at: datetime = OLD) -> None:
    async with kit.db.write() as conn:
        await conn.execute(update(d).where(d.c.id == delivery_id).values(completed_at=at))


async def event_ids(kit: DeliveryKit) -> set[str]:
    async with kit.db.read() as conn:
        return {r[0] for r in await conn.execute(select(e.c.id))}


async def delivery_ids(kit: DeliveryKit) -> set[str]:
    async with kit.db.read() as conn:
        return {r[0] for r in await conn.execute(select(d.c.id))}


async def attempt_delivery_ids(kit: DeliveryKit) -> list[str]:
    async with kit.db.read() as conn:
        return sorted(r[0] for r in await conn.execute(select(a.c.delivery_id)))


async def add_keys(kit: DeliveryKit, *created: tuple[str, datetime]) -> None:
    async with kit.db.write() as conn:
        await conn.execute(
            insert(k),
            [
                {
                    "key": key,
                    "fingerprint": "f" * 64,
                    "event_id": "evt_x",
                    "response_status": 202,
                    "response_body": "{}",
                    "created_at": at,
                }
                for key, at in created
            ],
        )


async def key_names(kit: DeliveryKit) -> set[str]:
    async with kit.db.read() as conn:
        return {r[0] for r in await conn.execute(select(k.c.key))}


async def by_event(kit: DeliveryKit) -> dict[str, Claimed]:
    return {c.event_id: c for c in await kit.claim()}


async def test_prune_removes_what_it_should_and_nothing_else(kit: DeliveryKit) -> None:
    await kit.subscription(ordering="none", event_types=["t"])
    (
        done,
        discarded,
        pending,
        in_flight,
        dead,
        fresh_done,
        fresh_pending,
    ) = await kit.events(*[("t", None) for _ in range(7)])
    claimed = await by_event(kit)
    # pending: put back as a retry due later
    await kit.finish(claimed[pending.id], "pending", next_attempt_at=NOW + timedelta(hours=1))
    await kit.finish(claimed[done.id], "succeeded")
    await kit.finish(claimed[discarded.id], "dead")
    await kit.finish(claimed[dead.id], "dead")
    await kit.finish(claimed[fresh_done.id], "succeeded")
    await kit.finish(claimed[fresh_pending.id], "pending", next_attempt_at=NOW + timedelta(hours=1))
    # in_flight stays claimed.
    dlv = {
        ev.id: (await kit.deliveries_of(ev.id))[0]["id"]
        for ev in (done, discarded, pending, in_flight, dead, fresh_done, fresh_pending)
    }
    async with kit.db.write() as conn:
        assert await dlq.discard(conn, "default", dlv[discarded.id], NOW - timedelta(days=9))
    await age_completion(kit, dlv[done.id])
    await age_completion(kit, dlv[discarded.id])
    for ev in (done, discarded, pending, in_flight, dead):
        await age_event(kit, ev)
    # An old event nobody subscribed to (stored before any subscription matched it).
    (orphan,) = await kit.events(("nobody.listens", None))
    assert await kit.deliveries_of(orphan.id) == []
    await age_event(kit, orphan)

    await add_keys(kit, ("old-1", OLD), ("old-2", CUTOFF - timedelta(seconds=1)), ("new", NOW))

    pruned = await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF)

    remaining_events = await event_ids(kit)
    assert done.id not in remaining_events
    assert discarded.id not in remaining_events
    assert orphan.id not in remaining_events
    assert pending.id in remaining_events
    assert in_flight.id in remaining_events
    assert dead.id in remaining_events
    assert fresh_done.id in remaining_events
    assert fresh_pending.id in remaining_events

    remaining = await delivery_ids(kit)
    assert dlv[done.id] not in remaining
    assert dlv[discarded.id] not in remaining
    for ev in (pending, in_flight, dead, fresh_done, fresh_pending):
        assert dlv[ev.id] in remaining, ev
    assert (await kit.delivery(dlv[dead.id]))["status"] == "dead"
    assert await dlq.get_dead(kit.db, "default", dlv[dead.id]) is not None, "the dead letter stays"
    assert len(await kit.attempts_of(dlv[dead.id])) == 1
    assert len(await kit.attempts_of(dlv[fresh_done.id])) == 1
    assert await kit.attempts_of(dlv[done.id]) == []
    assert dlv[done.id] not in await attempt_delivery_ids(kit)
    # The discarded delivery went with its event, and its attempt with it:
    # attempts have no foreign key, so no attempt outlives its delivery.
    assert await kit.attempts_of(dlv[discarded.id]) == []
    assert set(await attempt_delivery_ids(kit)) <= remaining

    assert await key_names(kit) == {"new"}
    assert pruned.deliveries == 1
    assert pruned.idempotency_keys == 2
    assert pruned.events == 3

    # A second pass finds nothing more.
    again = await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF)
    assert (again.deliveries, again.events, again.idempotency_keys) == (0, 0, 0)


async def test_old_events_without_deliveries_are_pruned(kit: DeliveryKit) -> None:
    old, new = await kit.events(("t", None), ("t", None))  # no subscription: no deliveries
    await age_event(kit, old)
    pruned = await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF)
    assert pruned.events == 1
    assert await event_ids(kit) == {new.id}


async def test_an_event_stays_while_any_of_its_deliveries_is_unfinished(
    kit: DeliveryKit,
) -> None:
    a_sub = await kit.subscription()
    b_sub = await kit.subscription()
    (event,) = await kit.events(("t", None))
    claimed = {c.subscription_id: c for c in await kit.claim()}
    await kit.finish(claimed[a_sub.id], "succeeded")
    await kit.finish(claimed[b_sub.id], "dead")
    ok = (await kit.delivery_for(event, a_sub))["id"]
    dead = (await kit.delivery_for(event, b_sub))["id"]
    await age_completion(kit, ok)
    await age_event(kit, event)

    pruned = await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF)
    assert (pruned.deliveries, pruned.events) == (1, 0)
    assert event.id in await event_ids(kit)
    assert await delivery_ids(kit) == {dead}
    assert await dlq.get_dead(kit.db, "default", dead) is not None

    # Once the dead letter is discarded, the event goes (with it).
    async with kit.db.write() as conn:
        assert await dlq.discard(conn, "default", dead, NOW)
    pruned = await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF)
    assert pruned.events == 1
    assert await event_ids(kit) == set()
    assert await delivery_ids(kit) == set()


async def test_nothing_newer_than_the_cutoff_is_touched(kit: DeliveryKit) -> None:
    await kit.subscription(ordering="none")
    recent_event, old_event = await kit.events(("t", None), ("t", None))
    for c in await kit.claim():
        await kit.finish(c, "succeeded")
    # The old event's delivery succeeded recently (a late retry, or a replay).
    await age_event(kit, old_event)
    await add_keys(kit, ("recent", CUTOFF + timedelta(seconds=5)))

    await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF)

    assert recent_event.id in await event_ids(kit)
    assert len(await kit.deliveries_of(recent_event.id)) == 1
    assert await key_names(kit) == {"recent"}
    recent_delivery = await kit.deliveries_of(old_event.id)
    assert len(recent_delivery) == 1, (
        "a delivery completed after the cutoff was deleted with its old event"
    )
    assert len(await kit.attempts_of(recent_delivery[0]["id"])) == 1


async def test_small_batches_loop_to_completion(kit: DeliveryKit) -> None:
    await kit.subscription(ordering="none")
    events = await kit.events(*[("t", None) for _ in range(7)])
    keep = (await kit.events(("t", None)))[0]
    for c in await kit.claim():
        await kit.finish(c, "succeeded")
    for ev in events:
        await age_event(kit, ev)
        await age_completion(kit, (await kit.deliveries_of(ev.id))[0]["id"])
    await add_keys(kit, *[(f"old-{i}", OLD) for i in range(7)], ("new", NOW))

    pruned = await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF, batch=2)

    assert (pruned.deliveries, pruned.events, pruned.idempotency_keys) == (7, 7, 7)
    assert await event_ids(kit) == {keep.id}
    assert len(await delivery_ids(kit)) == 1
    assert await key_names(kit) == {"new"}
    async with kit.db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(a))).scalar() == 1


async def test_batch_exactly_dividing_the_rows_still_finishes(kit: DeliveryKit) -> None:
    await add_keys(kit, *[(f"old-{i}", OLD) for i in range(6)])
    pruned = await retention.prune(kit.db, cutoff=CUTOFF, keys_cutoff=CUTOFF, batch=2)
    assert pruned.idempotency_keys == 6
    assert await key_names(kit) == set()
