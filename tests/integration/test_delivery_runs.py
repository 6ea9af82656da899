"""Line runs on both databases: a claim that takes the head of a line takes the
line's next deliveries with it (its run), leased to the same worker and never
readied one by one; whatever gives a run back, or leaves it to expire, readies
the line again, and no other worker takes any delivery of a line while one
holds its run."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text, update

from app.store import deliveries as delivery_store
from app.store import leases, schema
from app.store.work import Claimed, ClaimRequest, Completion
from tests.integration.conftest import LEASE, DeliveryKit


async def claim(
    kit: DeliveryKit,
    owner: str = "worker-a",
    *,
    run: int = 4,
    limit: int = 100,
    single: Sequence[str] = (),
    at: datetime | None = None,
    lease: timedelta = LEASE,
) -> list[Claimed]:
    now = at or datetime.now(UTC) + timedelta(seconds=1)
    request = ClaimRequest(owner, now, now + lease, limit, run=run, single=list(single))
    work = await delivery_store.complete_and_claim(kit.db, [], request=request)
    return [w.delivery for w in work]


def completion(
    claimed: Claimed,
    status: str,
    *,
    owner: str = "worker-a",
    next_attempt_at: datetime | None = None,
    followed: bool = False,
    returned: Sequence[int] = (),
) -> Completion:
    now = datetime.now(UTC)
    return Completion(
        delivery=claimed,
        owner=owner,
        status=status,
        started_at=now,
        duration_ms=3,
        status_code={"succeeded": 200, "pending": 503, "dead": 500}[status],
        error=None,
        response_body="ok",
        next_attempt_at=next_attempt_at,
        finished_at=now,
        followed=followed,
        returned=list(returned),
    )


async def write(kit: DeliveryKit, *completions: Completion) -> None:
    await delivery_store.complete_and_claim(kit.db, list(completions))


async def state(kit: DeliveryKit, claimed: Claimed) -> tuple[str, bool, int, str | None]:
    row = await kit.delivery(claimed.id)
    return row["status"], bool(row["ready"]), row["attempts"], row["lease_owner"]


def events_of(claimed: list[Claimed]) -> list[str]:
    return [c.event_id for c in claimed]


async def test_a_claim_takes_a_head_with_its_run_in_order(kit: DeliveryKit) -> None:
    await kit.subscription()
    e = await kit.events(*[("t", "k1")] * 6, ("t", "k2"), ("t", "k2"), ("t", None))
    claimed = await claim(kit, run=4)
    assert events_of(claimed) == [e[i].id for i in (0, 1, 2, 3, 6, 7, 8)]
    for c in claimed[1:4] + claimed[5:6]:
        assert await state(kit, c) == ("in_flight", False, 0, "worker-a"), "never readied"
    # Another worker finds nothing of either line while worker-a holds them.
    assert await claim(kit, "worker-b") == []

    # The runs delivered one by one, each but the last followed by the next.
    await write(kit, *(completion(c, "succeeded", followed=True) for c in claimed[0:3]))
    await write(kit, completion(claimed[3], "succeeded"))
    await write(kit, completion(claimed[4], "succeeded", followed=True))
    await write(kit, completion(claimed[5], "succeeded"), completion(claimed[6], "succeeded"))
    rest = await claim(kit, "worker-b", run=4)
    assert events_of(rest) == [e[4].id, e[5].id]


async def test_the_limit_bounds_heads_and_runs_together(kit: DeliveryKit) -> None:
    await kit.subscription()
    e = await kit.events(*[("t", "k1"), ("t", "k2")] * 4)
    claimed = await claim(kit, run=4, limit=5)
    # Both heads, then each run's first follower before any run's second.
    assert events_of(claimed) == [e[i].id for i in (0, 1, 2, 3, 4)]


async def test_ordering_none_and_single_subscriptions_take_no_runs(kit: DeliveryKit) -> None:
    keyed = await kit.subscription()
    e = await kit.events(("t", "k"), ("t", "k"), ("t", "k"))
    assert events_of(await claim(kit, run=4, single=[keyed.id])) == [e[0].id]
    await kit.set_subscription(keyed.id, status="paused")
    await kit.subscription(ordering="none")
    f = await kit.events(("t", "k"), ("t", "k"))
    assert events_of(await claim(kit, run=4)) == [f[0].id, f[1].id]


async def set_delivery(kit: DeliveryKit, seq: int, **values: object) -> None:
    d = schema.deliveries
    async with kit.db.write() as conn:
        await conn.execute(update(d).where(d.c.seq == seq).values(**values))


async def test_a_run_stops_before_a_delivery_that_is_not_pending(kit: DeliveryKit) -> None:
    sub = await kit.subscription()
    e = await kit.events(*[("t", "k")] * 5)
    # The third delivery of the line in flight elsewhere (as if a worker had
    # taken it over): the run ends before it and takes nothing after it.
    third = await kit.delivery_for(e[2], sub)
    await set_delivery(kit, third["seq"], status="in_flight", lease_owner="x")
    assert events_of(await claim(kit, run=5)) == [e[0].id, e[1].id]


async def test_a_run_stops_before_a_retry_not_yet_due(kit: DeliveryKit) -> None:
    sub = await kit.subscription()
    e = await kit.events(*[("t", "k")] * 3)
    second = await kit.delivery_for(e[1], sub)
    later = datetime.now(UTC) + timedelta(minutes=5)
    await set_delivery(kit, second["seq"], next_attempt_at=later)
    assert events_of(await claim(kit, run=5)) == [e[0].id]


async def test_a_retry_gives_its_run_back_with_the_outcome(kit: DeliveryKit) -> None:
    await kit.subscription()
    e = await kit.events(*[("t", "k")] * 4)
    head, *run = await claim(kit, run=3)
    assert events_of(run) == [e[1].id, e[2].id]
    retry_at = datetime.now(UTC) + timedelta(minutes=5)
    await write(
        kit,
        completion(head, "pending", next_attempt_at=retry_at, returned=[c.seq for c in run]),
    )
    for c in run:
        assert await state(kit, c) == ("pending", False, 0, None)
    assert await claim(kit, "worker-b") == [], "the line waits for its head's retry"
    again = await claim(kit, "worker-b", run=3, at=retry_at + timedelta(seconds=1))
    assert events_of(again) == [e[0].id, e[1].id, e[2].id]


@pytest.mark.parametrize(("on_dead_letter", "moves_on"), [("skip", True), ("block", False)])
async def test_a_dead_letter_gives_its_run_back_and_moves_the_line_on_unless_it_blocks(
    kit: DeliveryKit, on_dead_letter: str, moves_on: bool
) -> None:
    await kit.subscription(on_dead_letter=on_dead_letter)
    e = await kit.events(*[("t", "k")] * 4)
    head, *run = await claim(kit, run=3)
    await write(kit, completion(head, "dead", returned=[c.seq for c in run]))
    assert await state(kit, run[0]) == ("pending", moves_on, 0, None)
    assert await state(kit, run[1]) == ("pending", False, 0, None)
    taken = await claim(kit, "worker-b", run=3)
    assert events_of(taken) == ([e[1].id, e[2].id, e[3].id] if moves_on else [])


async def test_a_dead_letter_with_skip_moves_on_in_a_cycle_that_claims(kit: DeliveryKit) -> None:
    """The claim after the outcomes readies the first returned follower (on
    PostgreSQL the outcome write's own promotion may miss it, claims._FREED)."""
    await kit.subscription(on_dead_letter="skip")
    e = await kit.events(*[("t", "k")] * 3)
    head, *run = await claim(kit, run=3)
    now = datetime.now(UTC) + timedelta(seconds=1)
    request = ClaimRequest("worker-a", now, now + LEASE, 10, run=3)
    work = await delivery_store.complete_and_claim(
        kit.db, [completion(head, "dead", returned=[c.seq for c in run])], request=request
    )
    # SQLite's claim takes the line at once; PostgreSQL's readies it for the next.
    taken = [w.delivery for w in work] or await claim(kit, run=3)
    assert events_of(taken) == [e[1].id, e[2].id]


async def test_a_run_left_by_a_vanished_worker_is_readied_when_reaped(kit: DeliveryKit) -> None:
    await kit.subscription()
    e = await kit.events(*[("t", "k")] * 4)
    now = datetime.now(UTC) + timedelta(seconds=1)
    head, *run = await claim(kit, run=4, at=now, lease=timedelta(seconds=-1))
    await write(kit, completion(head, "succeeded", followed=True))  # then the worker died
    assert await claim(kit, "worker-b", at=now) == []
    assert await leases.reap_expired_leases(kit.db, now) == 3
    assert await state(kit, run[0]) == ("pending", True, 0, None)
    assert await state(kit, run[1]) == ("pending", False, 0, None)
    taken = await claim(kit, "worker-b", run=4, at=now)
    assert events_of(taken) == [e[1].id, e[2].id, e[3].id]


async def test_a_run_given_back_is_readied(kit: DeliveryKit) -> None:
    await kit.subscription()
    e = await kit.events(*[("t", "k")] * 3)
    head, *run = await claim(kit, run=3)
    await write(kit, completion(head, "succeeded", followed=True))
    await leases.release(kit.db, "worker-a", [c.seq for c in run])  # a worker stopping
    assert events_of(await claim(kit, "worker-b", run=3)) == [e[1].id, e[2].id]


async def test_what_another_worker_holds_is_not_given_back(kit: DeliveryKit) -> None:
    await kit.subscription()
    await kit.events(("t", "k"), ("t", None))
    keyed, loose = await claim(kit, run=1)
    await leases.release(kit.db, "worker-b", [keyed.seq, loose.seq])
    await leases.release(kit.db, "worker-a", [loose.seq])
    assert await state(kit, keyed) == ("in_flight", True, 0, "worker-a")
    assert await state(kit, loose) == ("pending", True, 0, None)


async def test_new_deliveries_of_a_line_held_in_a_run_wait(kit: DeliveryKit) -> None:
    sub = await kit.subscription()
    e = await kit.events(*[("t", "k")] * 2)
    head, follower = await claim(kit, run=4)
    f = await kit.events(("t", "k"))
    assert not (await kit.delivery_for(f[0], sub))["ready"]
    assert await claim(kit, "worker-b", run=4) == []
    await write(kit, completion(head, "succeeded", followed=True))
    assert await claim(kit, "worker-b", run=4) == []
    await write(kit, completion(follower, "succeeded"))
    assert events_of(await claim(kit, "worker-b", run=4)) == [f[0].id]
    assert e


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_run_ends_before_a_follower_another_transaction_holds(kit: DeliveryKit) -> None:
    sub = await kit.subscription()
    e = await kit.events(*[("t", "k")] * 4)
    third = await kit.delivery_for(e[2], sub)
    async with kit.db.writer.connect() as other, other.begin():
        await other.execute(
            text("SELECT 1 FROM deliveries WHERE seq = :s FOR UPDATE"), {"s": third["seq"]}
        )
        taken = await asyncio.wait_for(claim(kit, run=4), 5.0)
        await other.rollback()
    assert events_of(taken) == [e[0].id, e[1].id], "no gap: the run ends before it"


async def test_a_followers_retry_heads_its_line(kit: DeliveryKit) -> None:
    await kit.subscription()
    e = await kit.events(*[("t", "k")] * 3)
    head, second, third = await claim(kit, run=3)
    await write(kit, completion(head, "succeeded", followed=True))
    retry_at = datetime.now(UTC) + timedelta(minutes=5)
    await write(kit, completion(second, "pending", next_attempt_at=retry_at, returned=[third.seq]))
    assert await state(kit, second) == ("pending", True, 1, None), "ready for its retry"
    assert await state(kit, third) == ("pending", False, 0, None)
    assert await claim(kit, "worker-b") == []
    again = await claim(kit, "worker-b", run=3, at=retry_at + timedelta(seconds=1))
    assert events_of(again) == [e[1].id, e[2].id]
