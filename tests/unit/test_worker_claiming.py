"""The claim request the worker makes from the line policy's plan. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.store.work import ClaimRequest, Work
from app.worker.claiming import UNKNOWN_SUBSCRIPTION_PROBE, claim_request, probe_saw_everything
from app.worker.lines import ClaimPlan
from tests.unit.worker_fakes import ready

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def request(plan: ClaimPlan, probing: bool = False, batch: int = 100) -> ClaimRequest | None:
    return claim_request(plan, "w", NOW, LEASE, batch, probing)


def claim(plan: ClaimPlan, probing: bool = False, batch: int = 100) -> ClaimRequest:
    made = request(plan, probing, batch)
    assert made is not None
    return made


def work(subscription_id: str) -> Work:
    r = ready(subscription_id)
    return Work(r.delivery, r.event)


def test_nothing_is_claimed_without_capacity_or_room() -> None:
    assert request(ClaimPlan(0, 10, [], [], 0)) is None
    assert request(ClaimPlan(10, 0, ["a"], [], 0)) is None


def test_a_probe_makes_room_for_subscriptions_not_met_yet() -> None:
    plan = ClaimPlan(capacity=50, room=0, exclude=["a"], crowding=[], fresh_room=0)
    probe = claim(plan, probing=True)
    assert probe is not None
    assert probe.limit == UNKNOWN_SUBSCRIPTION_PROBE
    assert (probe.fresh, probe.oldest, probe.exclude) == (0, None, ["a"])
    assert probe.lease_until == NOW + LEASE


def test_the_limit_is_the_smallest_of_capacity_batch_and_room() -> None:
    assert claim(ClaimPlan(5, 40, [], [], 0)).limit == 5
    assert claim(ClaimPlan(500, 400, [], [], 0), batch=64).limit == 64
    assert claim(ClaimPlan(500, 7, [], [], 0)).limit == 7


def test_a_claim_while_a_tenant_crowds_walks_the_newest_of_the_others_too() -> None:
    plan = ClaimPlan(capacity=100, room=60, exclude=[], crowding=["a1", "a2"], fresh_room=20)
    probe = claim(plan, probing=True)
    assert (probe.limit, probe.fresh, probe.oldest) == (68, 28, 40)
    plain = claim(plan)
    assert (plain.limit, plain.fresh, plain.oldest) == (60, 20, 40)
    alone = claim(ClaimPlan(capacity=100, room=60, exclude=[], crowding=[], fresh_room=0))
    assert alone.fresh == 0, "no tenant crowds: no fresh walk"


def test_the_oldest_walk_takes_no_more_than_the_crowding_tenant_has_room_for() -> None:
    """It meets that tenant's backlog first: what it took over its room went back.
    The others' room is the fresh walk's."""
    plan = ClaimPlan(capacity=300, room=500, exclude=[], crowding=["a1"], fresh_room=497)
    made = claim(plan, batch=64)
    assert (made.limit, made.fresh, made.oldest) == (64, 64, 3)
    alone = claim(ClaimPlan(capacity=300, room=500, exclude=[], crowding=[], fresh_room=0))
    assert alone.oldest is None, "no tenant crowds: the oldest walk fills the limit"


def test_a_crowding_tenant_at_its_limit_leaves_only_the_fresh_walk() -> None:
    plan = ClaimPlan(
        capacity=100, room=12, exclude=["a1", "a2"], crowding=["a1", "a2"], fresh_room=12
    )
    made = claim(plan)
    assert (made.limit, made.fresh, made.oldest) == (12, 12, 0)
    idle = ClaimPlan(capacity=100, room=0, exclude=["a1"], crowding=["a1"], fresh_room=0)
    assert request(idle) is None, "nothing the others may take: no claim at all"


def test_a_probe_saw_everything_when_it_took_less_than_it_asked_for() -> None:
    plain = claim(ClaimPlan(100, 10, [], [], 0))
    assert probe_saw_everything(plain, [])
    full = [work("b") for _ in range(plain.limit)]
    assert not probe_saw_everything(plain, full)
    crowded = claim(ClaimPlan(100, 60, [], ["a"], 4), probing=True)
    # The fresh walk counts only what it took outside the crowding tenant.
    assert probe_saw_everything(crowded, [work("a")] * 50 + [work("b")] * 3)
    assert not probe_saw_everything(crowded, [work("b")] * crowded.fresh)


def test_a_quick_probe_takes_only_the_fresh_walk_and_only_while_a_tenant_crowds() -> None:
    plan = ClaimPlan(capacity=100, room=60, exclude=[], crowding=["a1", "a2"], fresh_room=20)
    quick = claim_request(plan, "w", NOW, LEASE, 100, True, quick=True)
    assert quick is not None
    fresh = 20 + UNKNOWN_SUBSCRIPTION_PROBE
    assert (quick.limit, quick.fresh, quick.oldest) == (fresh, fresh, 0)
    assert quick.crowding == ["a1", "a2"]
    alone = ClaimPlan(capacity=100, room=60, exclude=[], crowding=[], fresh_room=0)
    assert claim_request(alone, "w", NOW, LEASE, 100, True, quick=True) is None
    single = ClaimPlan(capacity=100, room=60, exclude=[], crowding=["a1"], fresh_room=0)
    assert claim_request(single, "w", NOW, LEASE, 100, True, quick=True) is None, "one tenant"
    full = ClaimPlan(capacity=0, room=60, exclude=[], crowding=["a1"], fresh_room=20)
    assert claim_request(full, "w", NOW, LEASE, 100, True, quick=True) is None
