"""Parking (app/store/parking.py): a paused or circuit-open subscription's due
deliveries leave the claim index; once it may be sent to again the claims take
them from the parked index, oldest first and in order per key, readied by the
lease's own write; a half-open circuit gets one readied to probe with."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.metrics import Metrics
from app.store import gauges, leases, parking, schema
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


async def _due(kit: DeliveryKit, sub: Subscription) -> datetime:
    """When the subscription's oldest pending delivery fell due."""
    d = schema.deliveries
    query = select(func.min(d.c.next_attempt_at)).where(
        d.c.subscription_id == sub.id, d.c.status == "pending"
    )
    async with kit.db.read() as conn:
        due: datetime = (await conn.execute(query)).scalar_one()
    return due


def _job(kit: DeliveryKit) -> tuple[ParkingJob, list[int]]:
    woken: list[int] = []
    return ParkingJob(kit.db, unparked=lambda: woken.append(1)), woken


async def _until_done(job: ParkingJob, now: datetime | None = None) -> int:
    """Passes until one rests as long as an idle job does; how many it took."""
    for passes in range(1, 1000):
        if not await job.run_once(now):
            return passes
    raise AssertionError("the parking job never finished")


async def test_a_paused_subscriptions_backlog_is_parked_and_claimed_again_on_resume(
    kit: DeliveryKit,
) -> None:
    held = await kit.subscription(event_types=["held.*"], ordering="key")
    other = await kit.subscription(event_types=["other.*"])
    await kit.events(*[("held.x", KEYS[i % 3]) for i in range(12)], together=True)
    await kit.events(("other.x", None))
    before = await _marks(kit, held)
    heads = {seq for seq, (ready, _) in before.items() if ready}
    assert len(heads) == len(KEYS), "one head per line"
    await kit.set_subscription(held.id, status="paused")
    job, woken = _job(kit)

    await _until_done(job)

    parked = await _marks(kit, held)
    assert {seq for seq, (_, p) in parked.items() if p} == heads, "the heads, and only they"
    assert not any(ready for ready, _ in parked.values())
    assert all(not p for _, p in (await _marks(kit, other)).values())
    assert [c.subscription_id for c in await kit.claim(resumed=[held.id])] == [other.id]
    assert await leases.next_due(kit.db, after=datetime.now(UTC) - timedelta(hours=1)) is None
    assert (woken, job.resumed) == ([], ())
    assert await gauges.oldest_due(kit.db) == await _due(kit, other), "held: not lagging"

    await kit.set_subscription(held.id, status="active")
    await _until_done(job)

    assert job.resumed == (held.id,)
    assert await gauges.oldest_due(kit.db) == await _due(kit, held), "the lag counts them"
    assert woken, "the worker is woken for what became claimable"
    assert await _marks(kit, held) == parked, "nothing is written to ready them"
    assert await kit.claim() == [], "a claim that does not name it passes them by"
    claimed = await kit.claim(resumed=job.resumed)
    assert {c.seq for c in claimed} == heads
    assert sorted(c.ordering_key for c in claimed) == sorted(KEYS)
    await leases.release(kit.db, "worker-a", [c.seq for c in claimed])
    assert await _marks(kit, held) == before, "given back, they are as they were"


async def test_a_claim_takes_only_the_heads_it_may_of_a_resumed_subscription(
    kit: DeliveryKit,
) -> None:
    """The parked walk keeps the claim's rules: a line with an earlier
    delivery unfinished waits, and a subscription held again is passed by."""
    sub = await kit.subscription(ordering="key")
    await kit.set_subscription(sub.id, status="paused")
    await kit.events(("t", "a"), ("t", "b"), together=True)
    job, _ = _job(kit)
    await _until_done(job)
    await kit.set_subscription(sub.id, status="active")
    await _until_done(job)
    (first,) = await kit.claim(resumed=job.resumed, limit=1)
    await kit.events(("t", first.ordering_key))  # behind its line's delivery in flight
    await kit.set_subscription(sub.id, status="paused")
    assert await kit.claim(resumed=[sub.id]) == []
    await kit.set_subscription(sub.id, status="active")
    (second,) = await kit.claim(resumed=[sub.id])
    assert second.ordering_key != first.ordering_key
    await kit.set_subscription(sub.id, circuit_open_until=datetime.now(UTC) - timedelta(seconds=1))
    assert await kit.claim(resumed=[sub.id]) == [], "a half-open circuit's probe is the job's"


async def test_an_open_circuit_parks_and_its_half_open_probe_gets_one(kit: DeliveryKit) -> None:
    sub = await kit.subscription(ordering="none")
    await kit.events(*[("t", None) for _ in range(10)], together=True)
    now = datetime.now(UTC) + timedelta(seconds=1)
    await kit.set_subscription(sub.id, circuit_open_until=now + timedelta(minutes=5))
    job, _ = _job(kit)

    await _until_done(job, now)
    assert [p for _, p in (await _marks(kit, sub)).values()] == [True] * 10
    assert job.resumed == ()

    later = now + timedelta(minutes=10)  # the cool-down is over: half-open
    await _until_done(job, later)
    await _until_done(job, later)
    marks = await _marks(kit, sub)
    readied = [seq for seq, (ready, _) in marks.items() if ready]
    assert readied == [min(marks)], "one probe, the oldest, once per cool-down"
    assert job.resumed == ()

    await kit.set_subscription(sub.id, circuit_open_until=None, consecutive_failures=0)
    await _until_done(job, later)
    assert job.resumed == (sub.id,)
    assert len(await kit.claim(resumed=job.resumed, at=later)) == 10


async def test_a_long_backlog_is_parked_in_batches_and_taken_by_claims_oldest_first(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PARKING_BATCH", 4)
    monkeypatch.setattr(retention, "PARKING_CHUNKS", 2)
    sub = await kit.subscription(ordering="none")
    await kit.set_subscription(sub.id, status="paused")
    await kit.events(*[("t", None) for _ in range(30)], together=True)
    job, _ = _job(kit)

    assert await _until_done(job) > 1, "a pass parks no more than its chunks"
    assert {p for _, p in (await _marks(kit, sub)).values()} == {True}
    await kit.set_subscription(sub.id, status="active")
    await _until_done(job)
    await kit.events(("t", None))  # due after the parked ones

    taken: list[int] = []
    while batch := await kit.claim(resumed=job.resumed, limit=7):
        assert len(batch) == 7 or len(taken) + len(batch) == 31
        taken += [c.seq for c in batch]
    assert taken == sorted(taken), "the parked backlog first, oldest first, then the new one"
    assert len(taken) == 31
    assert await _marks(kit, sub) == {}
    assert await _until_done(job) == 1
    assert job.resumed == ()


async def test_a_parked_delivery_of_a_resumed_subscription_is_claimable_after_the_next_pass(
    kit: DeliveryKit,
) -> None:
    """Parking writes re-check that the subscription is held, and whatever
    is parked for a subscription that is not is named by the next pass."""
    sub = await kit.subscription(ordering="none")
    await kit.set_subscription(sub.id, status="paused")
    await kit.events(("t", None), ("t", None))
    swept = await parking.sweep(kit.db, None, datetime.now(UTC) + timedelta(seconds=1), 10)
    assert (swept.parked, swept.seen, swept.cursor) == (2, 2, None)
    await kit.set_subscription(sub.id, status="active")
    job, woken = _job(kit)

    await job.run_once()

    assert (job.resumed, woken) == ((sub.id,), [1])
    assert len(await kit.claim(resumed=job.resumed)) == 2


async def test_the_resumed_subscriptions_take_turns_at_the_head_of_the_list(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "RESUMED_PER_CLAIM", 2)
    subs = [await kit.subscription(ordering="none") for _ in range(3)]
    for sub in subs:
        await kit.set_subscription(sub.id, status="paused")
    await kit.events(("t", None), together=True)
    job, _ = _job(kit)
    await _until_done(job)
    for sub in subs:
        await kit.set_subscription(sub.id, status="active")
    await _until_done(job)

    orders = [job.resumed for _ in range(3)]

    assert {order[0] for order in orders} == {sub.id for sub in subs}
    assert all(len(set(order)) == 2 for order in orders), "two a claim"


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
