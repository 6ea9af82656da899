"""The worker's cycle on both databases: one transaction (on PostgreSQL two,
when outcomes left their lines) records finished attempts and claims for the
freed slots, including the heads those outcomes just promoted, and returns
each claimed delivery with its event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.errors import StoreUnavailable
from app.store import claims, leases
from app.store import deliveries as delivery_store
from app.store.work import Claimed, ClaimRequest, Completion, Work
from tests.integration.conftest import LEASE, DeliveryKit


def outcome(claimed: Claimed, status: str, owner: str = "worker-a", **fields: object) -> Completion:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "started_at": now,
        "duration_ms": 2,
        "status_code": {"succeeded": 200, "pending": 503, "dead": 500}[status],
        "error": None,
        "response_body": "body",
        "next_attempt_at": None,
        "finished_at": now,
    } | fields
    return Completion(delivery=claimed, owner=owner, status=status, **values)  # type: ignore[arg-type]


async def cycle(
    kit: DeliveryKit, completions: list[Completion], owner: str = "worker-a", limit: int = 100
) -> list[Work]:
    now = datetime.now(UTC) + timedelta(seconds=1)
    request = ClaimRequest(owner, now, now + LEASE, limit)
    return await delivery_store.complete_and_claim(kit.db, completions, (), request, now)


async def test_a_cycle_claims_the_heads_its_outcomes_free_with_their_events(
    kit: DeliveryKit,
) -> None:
    sub = await kit.subscription()
    e = await kit.events(("a", "k1"), ("b", "k1"), ("c", "k2"), ("d", "k2"), ("e", None))
    heads = await cycle(kit, [])
    assert [w.delivery.event_id for w in heads] == [e[0].id, e[2].id, e[4].id]
    for w, event in zip(heads, (e[0], e[2], e[4]), strict=True):
        assert (w.event.id, w.event.type, w.event.key, w.event.data_json) == (
            event.id,
            event.type,
            event.key,
            "{}",
        )
        assert w.event.received_at == event.received_at
        assert w.event.received_at.tzinfo is UTC

    # k1's head succeeds, k2's is retried later: only k1 moves on, in the same cycle.
    later = datetime.now(UTC) + timedelta(minutes=5)
    done = [
        outcome(heads[0].delivery, "succeeded"),
        outcome(heads[1].delivery, "pending", next_attempt_at=later),
    ]
    following = await cycle(kit, done)
    assert [(w.delivery.event_id, w.event.type) for w in following] == [(e[1].id, "b")]
    row = await kit.delivery_for(e[1], sub)
    assert (row["status"], row["lease_owner"]) == ("in_flight", "worker-a")

    first = await kit.delivery_for(e[0], sub)
    assert (first["status"], first["attempts"], first["lease_owner"]) == ("succeeded", 1, None)
    retried = await kit.delivery_for(e[2], sub)
    assert (retried["status"], retried["attempts"], retried["last_status_code"]) == (
        "pending",
        1,
        503,
    )
    assert [(a["attempt"], a["status_code"]) for a in await kit.attempts_of(first["id"])] == [
        (1, 200)
    ]
    # Every field of the outcome arrives as it was given (PostgreSQL reads them from JSON).
    (attempt,) = await kit.attempts_of(first["id"])
    given = done[0]
    assert (attempt["started_at"], attempt["duration_ms"], attempt["error"]) == (
        given.started_at,
        2,
        None,
    )
    assert (attempt["response_body"], first["completed_at"]) == ("body", given.finished_at)
    assert (retried["next_attempt_at"], retried["completed_at"]) == (later, None)
    assert await cycle(kit, []) == [], "k2 waits for its retry, k1 is in flight"


async def test_a_cycle_only_writes_for_the_current_owner(kit: DeliveryKit) -> None:
    """A worker whose lease was taken over records nothing, and its cycle does not
    free the line the new owner holds."""
    sub = await kit.subscription()
    e = await kit.events(("t", "k"), ("t", "k"))
    now = datetime.now(UTC)
    (stale,) = await kit.claim("worker-a", at=now, lease=timedelta(seconds=-1))
    assert await leases.reap_expired_leases(kit.db, now) == 1
    (current,) = await kit.claim("worker-b")
    assert current.id == stale.id

    assert await cycle(kit, [outcome(stale, "succeeded")]) == []
    row = await kit.delivery_for(e[0], sub)
    assert (row["status"], row["lease_owner"], row["attempts"]) == ("in_flight", "worker-b", 0)
    assert await kit.attempts_of(stale.id) == []

    following = await cycle(kit, [outcome(current, "succeeded", owner="worker-b")], "worker-b")
    assert [w.delivery.event_id for w in following] == [e[1].id]
    assert [a["attempt"] for a in await kit.attempts_of(current.id)] == [1]


async def test_a_cycle_claims_no_more_than_asked_and_in_sequence(kit: DeliveryKit) -> None:
    await kit.subscription(ordering="none")
    e = await kit.events(*[("t", None) for _ in range(7)], together=True)
    first = await cycle(kit, [], limit=3)
    assert [w.delivery.event_id for w in first] == [x.id for x in e[:3]]
    second = await cycle(kit, [outcome(w.delivery, "succeeded") for w in first], limit=10)
    assert [w.delivery.event_id for w in second] == [x.id for x in e[3:]]
    assert [w.delivery.seq for w in second] == sorted(w.delivery.seq for w in second)
    assert await delivery_store.complete_and_claim(kit.db, [], (), None) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_cycle_that_fails_on_sqlite_leaves_nothing_behind(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite cycle runs its own transaction on the driver's thread: a failure
    after the outcomes and the claim were written rolls all of it back, and the
    writer connection is usable again."""
    sub = await kit.subscription(ordering="none")
    e = await kit.events(*[("t", None) for _ in range(3)], together=True)
    first = await cycle(kit, [], limit=1)

    monkeypatch.setattr(delivery_store, "SQLITE_CLAIMED", "SELECT * FROM no_such_table")
    with pytest.raises(StoreUnavailable):
        await cycle(kit, [outcome(first[0].delivery, "succeeded")], limit=10)
    assert (await kit.delivery(first[0].delivery.id))["status"] == "in_flight"
    assert [(await kit.delivery_for(x, sub))["status"] for x in e[1:]] == ["pending", "pending"]
    assert await kit.attempts_of(first[0].delivery.id) == []

    monkeypatch.undo()
    again = await cycle(kit, [outcome(first[0].delivery, "succeeded")], limit=10)
    assert [w.delivery.event_id for w in again] == [x.id for x in e[1:]]
    assert (await kit.delivery(first[0].delivery.id))["status"] == "succeeded"


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_claim_that_fails_after_outcomes_left_their_lines_keeps_the_outcomes(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL commits outcomes that left their lines before the claim (so
    that no promoted head is updated twice in one transaction): when that claim
    fails, the outcomes and the readied head stay, and the cycle says so."""
    sub = await kit.subscription(ordering="key")
    e = await kit.events(("a", "k1"), ("b", "k1"))
    (head,) = await cycle(kit, [])

    async def failing(*args: object) -> list[Work]:
        raise RuntimeError("the claim failed")

    monkeypatch.setattr(delivery_store, "claim_postgresql", failing)
    with pytest.raises(delivery_store.ClaimFailed):
        await cycle(kit, [outcome(head.delivery, "succeeded")])
    assert (await kit.delivery(head.delivery.id))["status"] == "succeeded"
    assert [a["attempt"] for a in await kit.attempts_of(head.delivery.id)] == [1]
    following = await kit.delivery_for(e[1], sub)
    assert (following["status"], following["ready"]) == ("pending", True)

    monkeypatch.undo()
    assert [w.delivery.event_id for w in await cycle(kit, [])] == [e[1].id]


async def test_a_claim_carries_large_event_data_exactly(kit: DeliveryKit) -> None:
    """On SQLite, data past the inline limit is read apart from the claim's JSON
    array; either way the worker gets the stored text unchanged."""
    await kit.subscription(ordering="none")
    large = '{"blob": "' + 'a"\\u00e9\u00e9 ' * 20_000 + '"}'
    assert len(large) > claims.SQLITE_INLINE_DATA
    small = await kit.events(("t", None))
    big = await kit.events(("t", None), ("t", None), data_json=large)
    claimed = await cycle(kit, [], limit=10)
    data = {w.event.id: w.event.data_json for w in claimed}
    assert data == {small[0].id: "{}", big[0].id: large, big[1].id: large}
