"""The claim query and completions on both databases: per-key order, dead letters
(skip and block), retries, leases, and what keeps a delivery from being claimed.

API.md, Delivery: "for one subscription and one key, the first attempt of event
N+1 starts only after event N's delivery has succeeded or, with skip, was
dead-lettered or discarded. With block the key waits until its dead letter is
redriven and succeeds, or is discarded. Other keys, and events without a key,
never wait on it."
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from app.domain.subscriptions import SubscriptionPatch
from app.services.subscriptions import SubscriptionService
from app.store import dlq, leases, schema
from app.store.work import Claimed
from tests.integration.conftest import DeliveryKit


def event_ids(claimed: list[Claimed]) -> list[str]:
    return [c.event_id for c in claimed]


async def test_only_the_head_of_a_key_is_claimable(kit: DeliveryKit) -> None:
    await kit.subscription()
    # Events of one key arriving in separate requests, and in one batch.
    alone = await kit.events(("t", "k1"), ("t", "k1"), ("t", "k1"))
    batch = await kit.events(("t", "k2"), ("t", "k2"), ("t", "k2"), together=True)

    for i in range(3):
        claimed = await kit.claim()
        assert event_ids(claimed) == [alone[i].id, batch[i].id], f"step {i}"
        assert await kit.claim() == [], "the heads are in flight: nothing else of their keys"
        for c in claimed:
            await kit.finish(c, "succeeded")
    assert await kit.claim() == []


async def test_other_keys_keyless_events_and_other_subscriptions_do_not_wait(
    kit: DeliveryKit,
) -> None:
    a = await kit.subscription()
    e = await kit.events(
        ("t", "k1"), ("t", "k1"), ("t", "k2"), ("t", None), ("t", None), ("t", "k2")
    )
    claimed = await kit.claim()
    assert event_ids(claimed) == [e[0].id, e[2].id, e[3].id, e[4].id]
    by_event = {c.event_id: c for c in claimed}

    await kit.finish(by_event[e[2].id], "succeeded")  # k2 moves on while k1 is still out
    assert event_ids(await kit.claim()) == [e[5].id]

    # The same key on another subscription is another line.
    b = await kit.subscription()
    f = await kit.events(("t", "k1"), ("t", "k1"))
    assert [(c.subscription_id, c.event_id) for c in await kit.claim()] == [(b.id, f[0].id)]

    await kit.finish(by_event[e[0].id], "succeeded")
    assert [(c.subscription_id, c.event_id) for c in await kit.claim()] == [(a.id, e[1].id)]


async def test_claim_basics(kit: DeliveryKit) -> None:
    """Not before it is due; the oldest first within the limit; the lease on the row."""
    sub = await kit.subscription()
    e = await kit.events(("t", None), ("t", None), ("t", "k"), together=True)
    assert await kit.claim(at=datetime.now(UTC) - timedelta(minutes=1)) == []

    at = datetime.now(UTC) + timedelta(seconds=1)
    first = await kit.claim("worker-x", at=at, limit=2, lease=timedelta(seconds=90))
    assert event_ids(first) == [e[0].id, e[1].id]
    row = await kit.delivery_for(e[0], sub)
    assert row["id"] == first[0].id
    assert (row["status"], row["lease_owner"]) == ("in_flight", "worker-x")
    assert row["lease_expires_at"] == at + timedelta(seconds=90)

    (last,) = await kit.claim(limit=2)
    assert (last.event_id, last.attempts, last.ordering_key, last.subscription_id) == (
        e[2].id,
        0,
        "k",
        sub.id,
    )


async def test_ordering_none_claims_everything_at_once(kit: DeliveryKit) -> None:
    keyed = await kit.subscription()
    unordered = await kit.subscription(ordering="none")
    e = await kit.events(("t", "k1"), ("t", "k1"), ("t", "k1"))
    claimed = await kit.claim()
    assert [(c.subscription_id, c.event_id) for c in claimed] == [
        (keyed.id, e[0].id),
        (unordered.id, e[0].id),
        (unordered.id, e[1].id),
        (unordered.id, e[2].id),
    ]
    assert all(c.ordering_key is None for c in claimed if c.subscription_id == unordered.id)
    assert (await kit.delivery_for(e[1], unordered))["ordering_key"] is None


# -- dead letters: skip and block ---------------------------------------------


async def test_dead_head_with_skip_frees_the_key(kit: DeliveryKit) -> None:
    sub = await kit.subscription(on_dead_letter="skip")
    e = await kit.events(("t", "k"), ("t", "k"))
    (head,) = await kit.claim()
    await kit.finish(head, "dead")
    assert (await kit.delivery_for(e[0], sub))["status"] == "dead"
    (second,) = await kit.claim()
    assert second.event_id == e[1].id
    await kit.finish(second, "dead")

    # A key whose dead letters are skipped takes new events straight away.
    (later,) = await kit.events(("t", "k"))
    assert event_ids(await kit.claim()) == [later.id]


async def test_dead_head_with_block_holds_the_key(kit: DeliveryKit) -> None:
    sub = await kit.subscription(on_dead_letter="block")
    e = await kit.events(("t", "k"), ("t", "k"), ("t", "j"), ("t", "j"), ("t", "m"), ("t", "m"))
    claimed = await kit.claim()
    assert event_ids(claimed) == [e[0].id, e[2].id, e[4].id]
    for c in claimed:
        await kit.finish(c, "dead")
    assert await kit.claim() == []

    # New events of a blocked key wait too; other keys and key-less ones do not.
    late = await kit.events(("t", "k"), ("t", "fresh"), ("t", None))
    assert event_ids(await kit.claim()) == [late[1].id, late[2].id]

    # The query itself enforces the block, whatever the ready mark says.
    d = schema.deliveries
    waiting = await kit.delivery_for(e[1], sub)
    async with kit.db.write() as conn:
        await conn.execute(update(d).where(d.c.id == waiting["id"]).values(ready=True))
    assert await kit.claim() == []

    # Discarding the dead letter (DELETE /v1/dlq/{id}) unblocks the key, in order.
    now = datetime.now(UTC)
    async with kit.db.write() as conn:
        assert await dlq.discard(conn, "default", (await kit.delivery_for(e[0], sub))["id"], now)
    (next_up,) = await kit.claim()
    assert next_up.event_id == e[1].id
    assert await kit.claim() == []
    await kit.finish(next_up, "succeeded")
    assert event_ids(await kit.claim()) == [late[0].id]

    # Redriving it goes first, then the key moves on once it succeeds.
    dead_j = await kit.delivery_for(e[2], sub)
    async with kit.db.write() as conn:
        assert await dlq.redrive(conn, "default", dead_j["id"], datetime.now(UTC))
    (redriven,) = await kit.claim()
    assert (redriven.id, redriven.attempts) == (dead_j["id"], 1)
    assert await kit.claim() == []
    await kit.finish(redriven, "succeeded")
    assert event_ids(await kit.claim()) == [e[3].id]

    # Loosening the rule to skip frees the last blocked key.
    service = SubscriptionService(kit.db, allow_private_targets=True)
    await service.patch("default", sub.id, SubscriptionPatch(on_dead_letter="skip"))
    assert event_ids(await kit.claim()) == [e[5].id]


async def test_redriven_dead_letter_is_delivered_again_with_skip(kit: DeliveryKit) -> None:
    await kit.subscription(on_dead_letter="skip")
    e = await kit.events(("t", "k"), ("t", "k"))
    (head,) = await kit.claim()
    await kit.finish(head, "dead")
    (second,) = await kit.claim()
    assert second.event_id == e[1].id
    await kit.finish(second, "succeeded")

    async with kit.db.write() as conn:
        assert await dlq.redrive(conn, "default", head.id, datetime.now(UTC))
    (again,) = await kit.claim()
    assert (again.id, again.attempts) == (head.id, 1)
    await kit.finish(again, "succeeded")
    assert [a["attempt"] for a in await kit.attempts_of(head.id)] == [1, 2]


# -- retries ----------------------------------------------------------------------


async def test_a_retry_keeps_its_place_in_the_line(kit: DeliveryKit) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert await leases.next_due(kit.db, after=before) is None
    sub = await kit.subscription()
    e = await kit.events(("t", "k"), ("t", "k"), ("t", None))
    assert await leases.next_due(kit.db, after=before) == e[0].received_at
    # Due by the time a claim saw it and still pending: held, not waited for.
    assert await leases.next_due(kit.db, after=e[2].received_at) is None
    claimed = await kit.claim()
    assert event_ids(claimed) == [e[0].id, e[2].id]
    await kit.finish(claimed[1], "succeeded")

    retry_at = datetime.now(UTC) + timedelta(minutes=5)
    await kit.finish(claimed[0], "pending", status_code=503, next_attempt_at=retry_at)
    row = await kit.delivery_for(e[0], sub)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 503)
    assert row["next_attempt_at"] == retry_at
    assert row["lease_owner"] is None

    assert await kit.claim() == [], "the next event of the key waits for the retry"
    assert await leases.next_due(kit.db, after=datetime.now(UTC)) == retry_at

    (again,) = await kit.claim(at=retry_at + timedelta(seconds=1))
    assert (again.event_id, again.attempts) == (e[0].id, 1)
    await kit.finish(again, "succeeded")
    (last,) = await kit.claim(at=retry_at + timedelta(seconds=2))
    assert last.event_id == e[1].id
    await kit.finish(last, "succeeded")
    assert await leases.next_due(kit.db, after=before) is None

    attempts = await kit.attempts_of(again.id)
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 503), (2, 200)]


# -- leases -----------------------------------------------------------------------


async def test_leases_expire_and_are_released(kit: DeliveryKit) -> None:
    sub = await kit.subscription()
    e = await kit.events(("t", "k"), ("t", "k"), ("t", "j"))
    now = datetime.now(UTC) + timedelta(seconds=1)
    (stale,) = await kit.claim("worker-a", at=now, limit=1, lease=timedelta(seconds=-1))
    (live,) = await kit.claim("worker-a", at=now, limit=1, lease=timedelta(seconds=30))
    assert (stale.event_id, live.event_id) == (e[0].id, e[2].id)

    assert await leases.reap_expired_leases(kit.db, now) == 1
    row = await kit.delivery_for(e[0], sub)
    assert (row["status"], row["lease_owner"], row["lease_expires_at"]) == ("pending", None, None)
    assert (await kit.delivery_for(e[2], sub))["lease_owner"] == "worker-a"

    (fresh,) = await kit.claim("worker-b", at=now)
    assert (fresh.id, fresh.event_id) == (stale.id, e[0].id), "the head again, not the next"
    assert (await kit.delivery_for(e[0], sub))["lease_owner"] == "worker-b"

    # Renewed leases outlive their first expiry; only the named ones are renewed.
    later = now + timedelta(minutes=10)
    # worker-a names worker-b's claim too: not its own, so not renewed (LEASE is 5 min).
    await leases.renew_leases(kit.db, "worker-a", [live.seq, fresh.seq], later)
    await leases.renew_leases(kit.db, "worker-b", [], later)
    assert await leases.reap_expired_leases(kit.db, now + timedelta(minutes=7)) == 1
    assert (await kit.delivery_for(e[2], sub))["lease_owner"] == "worker-a"
    assert (await kit.delivery_for(e[0], sub))["status"] == "pending", "worker-b's, not renewed"

    # release: only the owner's leases, back to pending untouched.
    await leases.release(kit.db, "worker-b", [live.seq])
    assert (await kit.delivery_for(e[2], sub))["status"] == "in_flight"
    await leases.release(kit.db, "worker-a", [live.seq])
    row = await kit.delivery_for(e[2], sub)
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 0, None)
    # Both heads are free: the reaped one of line k and the released one of line j.
    assert event_ids(await kit.claim("worker-c")) == [e[0].id, e[2].id]


async def test_leases_are_renewed_in_batches_each_its_own_transaction(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "RENEW_BATCH", 2)
    await kit.subscription()
    await kit.events(*[("t", None)] * 5)
    now = datetime.now(UTC) + timedelta(seconds=1)
    claimed = await kit.claim("worker-a", at=now)
    assert len(claimed) == 5
    later = now + timedelta(minutes=10)
    # Named out of order, with one that is not worker-a's: every batch is renewed.
    await leases.renew_leases(kit.db, "worker-a", [c.seq for c in reversed(claimed)] + [0], later)
    assert [(await kit.delivery(c.id))["lease_expires_at"] for c in claimed] == [later] * 5
    assert await leases.reap_expired_leases(kit.db, now + timedelta(minutes=7)) == 0


async def _stolen(kit: DeliveryKit, keys: int) -> list[tuple[Claimed, Claimed]]:
    """Heads of ``keys`` lines claimed by worker-a, whose leases expired, then claimed
    by worker-b: (worker-a's claim, worker-b's claim) each."""
    await kit.subscription()
    await kit.events(*[("t", f"k{i}") for i in range(keys) for _ in range(2)])
    now = datetime.now(UTC) + timedelta(seconds=1)
    stale = await kit.claim("worker-a", at=now, lease=timedelta(seconds=-1))
    assert await leases.reap_expired_leases(kit.db, now) == keys
    fresh = await kit.claim("worker-b", at=now)
    assert [c.id for c in stale] == [c.id for c in fresh]
    return list(zip(stale, fresh, strict=True))


async def test_completion_from_a_former_owner_changes_no_delivery(kit: DeliveryKit) -> None:
    stolen = await _stolen(kit, 3)
    retry_at = datetime.now(UTC) + timedelta(hours=1)
    for (stale, _), status in zip(stolen, ["succeeded", "dead", "pending"], strict=True):
        before = await kit.delivery(stale.id)
        await kit.finish(stale, status, owner="worker-a", next_attempt_at=retry_at)
        assert await kit.delivery(stale.id) == before, status
        assert (before["status"], before["lease_owner"], before["attempts"]) == (
            "in_flight",
            "worker-b",
            0,
        )
    assert await kit.claim("worker-c") == [], "no line moved on"

    for _, fresh in stolen:
        await kit.finish(fresh, "succeeded", owner="worker-b")
        after = await kit.delivery(fresh.id)
        assert (after["status"], after["attempts"], after["lease_owner"]) == ("succeeded", 1, None)
    assert len(await kit.claim("worker-c")) == 3


async def test_completion_from_a_former_owner_records_no_attempt(kit: DeliveryKit) -> None:
    """Owner fencing covers the attempt history too: one attempt, numbered once."""
    ((stale, fresh),) = await _stolen(kit, 1)
    await kit.finish(stale, "succeeded", owner="worker-a")
    assert await kit.attempts_of(stale.id) == []
    await kit.finish(fresh, "succeeded", owner="worker-b")
    assert [a["attempt"] for a in await kit.attempts_of(stale.id)] == [1]


# -- what keeps a subscription's deliveries from being claimed ---------------------


async def test_excluded_and_open_circuit_subscriptions_are_not_claimed(kit: DeliveryKit) -> None:
    a = await kit.subscription()
    b = await kit.subscription()
    c = await kit.subscription()
    await kit.events(("t", "k"), ("t", None))
    claimed = await kit.claim(exclude=[a.id, c.id])
    assert {x.subscription_id for x in claimed} == {b.id}
    assert len(claimed) == 2

    now = datetime.now(UTC) + timedelta(seconds=1)
    await kit.set_subscription(a.id, circuit_open_until=now + timedelta(seconds=30))
    await kit.set_subscription(c.id, circuit_open_until=now - timedelta(seconds=1))
    rest = await kit.claim(at=now)
    assert {x.subscription_id for x in rest} == {c.id}
    assert len(rest) == 2
    later = await kit.claim(at=now + timedelta(seconds=31))
    assert {x.subscription_id for x in later} == {a.id}
    assert len(later) == 2


async def test_inactive_subscriptions_are_not_claimed(kit: DeliveryKit) -> None:
    paused = await kit.subscription()
    disabled = await kit.subscription()
    await kit.events(("t", "k"), ("t", None))
    await kit.set_subscription(paused.id, status="paused")
    await kit.set_subscription(disabled.id, status="disabled")
    assert await kit.claim() == []
    await kit.set_subscription(paused.id, status="active")
    assert {c.subscription_id for c in await kit.claim()} == {paused.id}
    await kit.set_subscription(disabled.id, status="active")
    assert {c.subscription_id for c in await kit.claim()} == {disabled.id}


async def test_the_fresh_walk_finds_another_tenants_new_delivery_behind_a_backlog(
    kit: DeliveryKit,
) -> None:
    """A claim's fresh walk takes the newest due deliveries outside the crowding
    tenant; its oldest walk the rest of the limit, oldest first."""
    crowding = await kit.subscription(ordering="none", event_types=["t"])
    backlog = await kit.events(*[("t", None)] * 20, together=True)
    other = await kit.subscription(url="http://8.8.4.4/hooks", event_types=["o"])
    new = await kit.events(("o", "k"), ("o", "k"), ("o", None))

    assert event_ids(await kit.claim(limit=4, crowding=[crowding.id])) == [
        e.id for e in backlog[:4]
    ], "without a fresh walk the backlog comes first"
    claimed = await kit.claim(limit=5, fresh=3, crowding=[crowding.id])

    # The key's head only (the order rule holds in the fresh walk too), the
    # keyless one, and the rest of the limit from the backlog, oldest first.
    assert {c.event_id for c in claimed if c.subscription_id == other.id} == {new[0].id, new[2].id}
    assert [c.event_id for c in claimed if c.subscription_id == crowding.id] == [
        e.id for e in backlog[4:7]
    ]


async def test_the_oldest_walk_stops_at_its_own_bound_within_the_limit(kit: DeliveryKit) -> None:
    """The worker bounds the oldest walk by the crowding tenant's room: a claim
    whose fresh walk finds nothing takes no more of the backlog than that."""
    crowding = await kit.subscription(ordering="none", event_types=["t"])
    backlog = await kit.events(*[("t", None)] * 6, together=True)
    await kit.subscription(url="http://8.8.4.4/hooks", event_types=["o"])

    claimed = await kit.claim(limit=5, fresh=5, crowding=[crowding.id], oldest=2)

    assert event_ids(claimed) == [e.id for e in backlog[:2]]
    new = await kit.events(("o", None))
    claimed = await kit.claim(limit=5, fresh=5, crowding=[crowding.id], oldest=2)
    assert sorted(event_ids(claimed)) == sorted([new[0].id, *(e.id for e in backlog[2:4])])


async def test_the_fresh_walk_takes_the_newest_outside_the_crowding_tenant(
    kit: DeliveryKit,
) -> None:
    """Of more candidates than it may take, the fresh walk takes the newest,
    across subscriptions, past the crowding tenant's deliveries between them."""
    crowding = await kit.subscription(ordering="none", event_types=["t"])
    await kit.subscription(url="http://8.8.4.4/hooks", event_types=["o"])
    await kit.subscription(url="http://1.1.1.1/hooks", event_types=["p"])
    made = await kit.events(
        *[
            ("o", None),
            ("t", None),
            ("p", None),
            ("t", None),
            ("o", None),
            ("p", None),
            ("t", None),
        ],
        together=True,
    )

    claimed = await kit.claim(limit=3, fresh=3, crowding=[crowding.id], oldest=0)

    assert sorted(event_ids(claimed)) == sorted([made[2].id, made[4].id, made[5].id])
    claimed = await kit.claim(limit=3, fresh=3, crowding=[crowding.id], oldest=0)
    assert event_ids(claimed) == [made[0].id]


async def test_the_fresh_walk_leaves_out_what_every_claim_leaves_out(kit: DeliveryKit) -> None:
    crowding = await kit.subscription(ordering="none", event_types=["t"])
    await kit.events(*[("t", None)] * 5, together=True)
    at_limit = await kit.subscription(url="http://8.8.4.4/hooks", event_types=["o"])
    await kit.events(("o", None))

    claimed = await kit.claim(limit=3, fresh=3, exclude=[at_limit.id], crowding=[crowding.id])

    assert [c.subscription_id for c in claimed] == [crowding.id] * 3
    # Only the fresh walk: of the others, never the crowding subscription's.
    claimed = await kit.claim(limit=2, fresh=2, crowding=[crowding.id], oldest=0)
    assert [c.subscription_id for c in claimed] == [at_limit.id]
