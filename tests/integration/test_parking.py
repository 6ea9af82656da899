"""Parking (app/store/parking.py): a paused or circuit-open subscription's due
deliveries leave the claim index, and come back exactly as they were when it
may be sent to again; a half-open circuit gets one to probe with."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.metrics import Metrics
from app.store import leases, parking, schema
from app.store.subscriptions import Subscription
from app.worker import retention
from app.worker.retention import ParkingJob
from app.worker.worker import DeliveryWorker, WorkerConfig
from tests.e2e.receivers import Receiver, first_successes_by_key, wait_until
from tests.integration.conftest import DeliveryKit

KEYS = ("k1", "k2", "k3")


async def _marks(kit: DeliveryKit, sub: Subscription) -> dict[int, tuple[bool, bool]]:
    """Each pending delivery of ``sub``: (ready, parked), by seq."""
    d = schema.deliveries
    query = select(d.c.seq, d.c.ready, d.c.parked).where(
        d.c.subscription_id == sub.id, d.c.status == "pending"
    )
    async with kit.db.read() as conn:
        rows = (await conn.execute(query)).all()
    return {int(r[0]): (bool(r[1]), bool(r[2])) for r in rows}


def _job(kit: DeliveryKit) -> tuple[ParkingJob, list[int]]:
    woken: list[int] = []
    return ParkingJob(kit.db, unparked=lambda: woken.append(1)), woken


async def _until_done(job: ParkingJob, now: datetime | None = None) -> int:
    """Passes until one rests as long as an idle job does; how many it took."""
    for passes in range(1, 1000):
        if await job.run_once(now) >= retention.PARKING_INTERVAL_SECONDS:
            return passes
    raise AssertionError("the parking job never finished")


async def test_a_paused_subscriptions_backlog_is_parked_and_readied_as_it_was(
    kit: DeliveryKit,
) -> None:
    held = await kit.subscription(event_types=["held.*"], ordering="key")
    other = await kit.subscription(event_types=["other.*"])
    await kit.events(*[("held.x", KEYS[i % 3]) for i in range(12)], together=True)
    await kit.events(("other.x", None))
    before = await _marks(kit, held)
    assert sum(ready for ready, _ in before.values()) == len(KEYS), "one head per line"
    await kit.set_subscription(held.id, status="paused")
    job, woken = _job(kit)

    await _until_done(job)

    parked = await _marks(kit, held)
    assert {seq for seq, (_, p) in parked.items() if p} == {
        seq for seq, (ready, _) in before.items() if ready
    }, "the heads are parked, and only they"
    assert not any(ready for ready, _ in parked.values())
    assert all(not p for _, p in (await _marks(kit, other)).values())
    assert [c.subscription_id for c in await kit.claim()] == [other.id]
    assert await leases.next_due(kit.db, after=datetime.now(UTC) - timedelta(hours=1)) is None
    assert woken == []

    await kit.set_subscription(held.id, status="active")
    await _until_done(job)

    assert await _marks(kit, held) == {seq: (ready, False) for seq, (ready, _) in before.items()}
    assert woken, "the worker is woken for what was readied"
    assert sorted(c.ordering_key for c in await kit.claim()) == sorted(KEYS)


async def test_an_open_circuit_parks_and_its_half_open_probe_gets_one(kit: DeliveryKit) -> None:
    sub = await kit.subscription(ordering="none")
    await kit.events(*[("t", None) for _ in range(10)], together=True)
    now = datetime.now(UTC) + timedelta(seconds=1)
    await kit.set_subscription(sub.id, circuit_open_until=now + timedelta(minutes=5))
    job, _ = _job(kit)

    await _until_done(job, now)
    assert [p for _, p in (await _marks(kit, sub)).values()] == [True] * 10

    later = now + timedelta(minutes=10)  # the cool-down is over: half-open
    await _until_done(job, later)
    await _until_done(job, later)
    marks = await _marks(kit, sub)
    readied = [seq for seq, (ready, _) in marks.items() if ready]
    assert readied == [min(marks)], "one probe, the oldest, once per cool-down"

    await kit.set_subscription(sub.id, circuit_open_until=None, consecutive_failures=0)
    await _until_done(job, later)
    assert set((await _marks(kit, sub)).values()) == {(True, False)}


async def test_a_long_backlog_is_parked_in_batches_and_readied_as_the_worker_takes_it(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PARKING_BATCH", 4)
    monkeypatch.setattr(retention, "PARKING_CHUNKS", 2)
    monkeypatch.setattr(retention, "UNPARK_AHEAD", 2)
    sub = await kit.subscription(ordering="none")
    await kit.set_subscription(sub.id, status="paused")
    await kit.events(*[("t", None) for _ in range(30)], together=True)
    job, _ = _job(kit)

    assert await _until_done(job) > 1
    assert {p for _, p in (await _marks(kit, sub)).values()} == {True}

    await kit.set_subscription(sub.id, status="active")

    async def readied() -> int:
        return sum(ready for ready, _ in (await _marks(kit, sub)).values())

    for _ in range(3):
        assert await job.run_once() == retention.PARKING_PACE_SECONDS
    assert await readied() == 2 * 4, "two batches ahead of what the worker took, no more"
    monkeypatch.setattr(retention, "UNPARK_PATIENCE_SECONDS", 0.0)
    await job.run_once()
    assert await readied() == 3 * 4, "a batch the worker leaves untouched is not waited for"
    monkeypatch.setattr(retention, "UNPARK_PATIENCE_SECONDS", 3600.0)
    assert len(await kit.claim(limit=9)) == 9  # two batches, and one of the third
    await job.run_once()
    assert await readied() == 12 - 9 + 4
    taken = 9
    while await readied() or taken < 30:
        taken += len(await kit.claim(limit=30))
        await job.run_once()
    assert taken == 30
    assert await _until_done(job) == 1


async def test_a_parked_delivery_of_a_resumed_subscription_is_readied_by_the_next_pass(
    kit: DeliveryKit,
) -> None:
    """Parking writes re-check that the subscription is held, and whatever
    is parked for a subscription that is not is readied by the next pass."""
    sub = await kit.subscription(ordering="none")
    await kit.set_subscription(sub.id, status="paused")
    await kit.events(("t", None), ("t", None))
    swept = await parking.sweep(kit.db, None, datetime.now(UTC) + timedelta(seconds=1), 10)
    assert (swept.parked, swept.seen, swept.cursor) == (2, 2, None)
    await kit.set_subscription(sub.id, status="active")
    job, woken = _job(kit)

    await job.run_once()

    assert set((await _marks(kit, sub)).values()) == {(True, False)}
    assert woken == [1]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.close()


async def test_the_worker_parks_a_paused_backlog_and_delivers_it_in_order_on_resume(
    kit: DeliveryKit, receiver: Receiver
) -> None:
    sub = await kit.subscription(url=receiver.url(), ordering="key")
    await kit.set_subscription(sub.id, status="paused")
    for i in range(30):
        key = KEYS[i % 3]
        await kit.events(("t", key), data_json=json.dumps({"key": key, "seq": i}))
    config = WorkerConfig(retry_schedule=(1.0,), timeout_ms=5000, allow_private_targets=True)
    worker = DeliveryWorker(kit.db, config, Metrics())
    await worker.start()
    try:

        async def parked() -> bool:
            return any(p for _, p in (await _marks(kit, sub)).values())

        await wait_until(parked, 10.0, message="the paused backlog to be parked")
        await kit.set_subscription(sub.id, status="active")
        worker.subscription_changed(sub.id)  # as the API does when it resumes one

        async def delivered() -> bool:
            return (await kit.statuses()) == {"succeeded": 30}

        await wait_until(delivered, 10.0, message="every delivery after the resume")
    finally:
        await worker.stop()
    by_key = first_successes_by_key(receiver.receipts)
    assert sorted(by_key) == sorted(KEYS)
    assert all(seqs == sorted(seqs) and len(seqs) == 10 for seqs in by_key.values())
