"""The line policy on its own: slots, fair sharing, claim-ahead, circuits. No I/O."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from app.domain.circuit import CircuitChange, CircuitPolicy
from app.store.work import Completion, Work
from app.worker.circuits import CircuitBook
from app.worker.lines import KEEP_WARM_SECONDS, Line, LinePolicy, runs_of
from tests.unit.worker_fakes import ready, subscription

CIRCUIT = CircuitPolicy(failure_threshold=3)


def policy(concurrency: int = 32, claim_ahead: int = 2) -> LinePolicy:
    return LinePolicy(concurrency, claim_ahead, CIRCUIT)


def line(p: LinePolicy, sid: str, **fields: Any) -> Line:
    p.load(sid, subscription(sid, **fields), time.monotonic())
    return p.lines[sid]


def fill(p: LinePolicy, target: Line, count: int) -> int:
    """Take up to ``count`` slots for ``target``; how many it got."""
    return sum(p.take_slot(target) for _ in range(count))


def completion(sid: str, status: str, status_code: int) -> Completion:
    now = datetime.now(UTC)
    return Completion(
        delivery=ready(sid).delivery,
        owner="w",
        status=status,
        started_at=now,
        duration_ms=1,
        status_code=status_code,
        error=None,
        response_body=None,
        next_attempt_at=now + timedelta(seconds=5) if status == "pending" else None,
        finished_at=now,
    )


def test_max_in_flight_bounds_a_subscription() -> None:
    p = policy()
    a = line(p, "a", max_in_flight=3)
    assert fill(p, a, 10) == 3
    assert (a.in_flight, p.used) == (3, 3)


def test_the_reserve_keeps_a_slot_for_a_healthy_subscription_holding_none() -> None:
    p = policy(concurrency=32)
    busy = line(p, "busy", max_in_flight=1000)
    assert fill(p, busy, 100) == 32 - p.reserve
    failing = line(p, "failing", consecutive_failures=1)
    assert not p.take_slot(failing), "a failing subscription gets no reserved slot"
    other = line(p, "other")
    assert p.take_slot(other)
    assert p.used == 32 - p.reserve + 1


def test_the_reserve_takes_one_failing_subscription_of_a_tenant_holding_none() -> None:
    p = policy(concurrency=64)
    assert p.reserve == 2
    busy = line(p, "busy", max_in_flight=1000, tenant_id="A")
    assert fill(p, busy, 100) == 64 - p.reserve
    failing = line(p, "failing", consecutive_failures=1, tenant_id="A")
    assert not p.take_slot(failing), "its tenant holds slots: no reserved one"
    retrying = line(p, "retrying", consecutive_failures=1, tenant_id="B")
    assert p.take_slot(retrying), "its tenant holds none: its retry is not left behind A's"
    again = line(p, "again", consecutive_failures=1, tenant_id="B")
    assert not p.take_slot(again), "once its tenant holds one, the rest is for the healthy"
    assert p.take_slot(line(p, "healthy", tenant_id="B"))


def test_a_crowding_tenants_new_subscriptions_leave_part_of_the_reserve_to_another() -> None:
    """Tenant A holds all but the reserve; its subscriptions that hold none take
    only the reserve's first half while the worker knows another tenant's
    subscription: the rest is for that tenant's next delivery or retry."""
    p = policy(concurrency=64)
    assert (p.reserve, p.kept_for_tenants) == (2, 1)
    busy = line(p, "busy", max_in_flight=1000, tenant_id="A")
    assert fill(p, busy, 100) == 62
    b = line(p, "b", tenant_id="B", consecutive_failures=1)
    assert p.take_slot(line(p, "a2", tenant_id="A")), "the reserve's first half"
    assert not p.take_slot(line(p, "a3", tenant_id="A")), "the last slot is kept for B"
    assert p.take_slot(b), "its tenant holds none: a retry takes the kept slot"


def test_with_one_tenant_known_a_new_subscription_takes_the_whole_reserve() -> None:
    p = policy(concurrency=64)
    busy = line(p, "busy", max_in_flight=1000, tenant_id="A")
    fill(p, busy, 100)
    assert p.take_slot(line(p, "a2", tenant_id="A"))
    assert p.take_slot(line(p, "a3", tenant_id="A")), "no other tenant to keep it for"


def test_a_tenant_whose_subscriptions_are_gone_has_nothing_kept_for_it() -> None:
    p = policy(concurrency=64)
    busy = line(p, "busy", max_in_flight=1000, tenant_id="A")
    fill(p, busy, 100)
    line(p, "b", tenant_id="B")
    p.load("b", None, time.monotonic())  # deleted: the worker forgets it
    assert p.take_slot(line(p, "a2", tenant_id="A"))
    assert p.take_slot(line(p, "a3", tenant_id="A"))


def test_success_continues_the_line_in_the_same_slot() -> None:
    p = policy()
    a = line(p, "a", max_in_flight=2)
    assert fill(p, a, 2) == 2
    queued = [ready("a"), ready("a")]
    for r in queued:
        p.queue(a, r)

    after = p.next_after(a, succeeded=True, stopping=False)

    assert after == (a, queued[0])
    assert (a.in_flight, p.used, p.waiting) == (2, 2, 1)


def test_a_failure_gives_back_what_was_claimed_ahead_and_frees_the_slot() -> None:
    p = policy()
    a = line(p, "a", max_in_flight=2)
    fill(p, a, 2)
    queued = [ready("a"), ready("a"), ready("a")]
    for r in queued:
        p.queue(a, r)

    assert p.next_after(a, succeeded=False, stopping=False) is None

    assert p.released() == [r.delivery.seq for r in queued]
    assert (a.in_flight, p.used, p.waiting, p.queued()) == (1, 1, 0, set())


def test_a_slot_moves_to_a_waiting_subscription_that_holds_fewer() -> None:
    p = policy(concurrency=32)
    busy = line(p, "busy", max_in_flight=1000)
    fill(p, busy, 100)
    for _ in range(5):
        p.queue(busy, ready("busy"))
    other = line(p, "other")
    assert p.take_slot(other)  # the reserve
    waiting = ready("other")
    p.queue(other, waiting)

    assert p.next_after(busy, succeeded=True, stopping=False) == (other, waiting)
    assert (busy.in_flight, other.in_flight, p.used) == (30, 2, 32)
    # Nothing else waits for a slot: the busy subscription goes on.
    nxt = p.next_after(busy, succeeded=True, stopping=False)
    assert nxt is not None
    assert nxt[0] is busy


def test_freed_slots_go_to_waiting_subscriptions_in_turn() -> None:
    p = policy(concurrency=4, claim_ahead=4)
    a, b = line(p, "a"), line(p, "b")
    for _ in range(3):
        p.queue(a, ready("a"))
        p.queue(b, ready("b"))

    started = p.start_waiting()

    assert [lin.subscription.id for lin, _ in started] == ["a", "b", "a", "b"][: 4 - p.reserve]
    assert p.used == len(started)


def test_claim_ahead_is_bounded_per_subscription_and_overall() -> None:
    p = policy(concurrency=4, claim_ahead=2)
    a = line(p, "a", max_in_flight=1)
    fill(p, a, 1)
    assert p.room_ahead(a) == 2
    p.queue(a, ready("a"))
    p.queue(a, ready("a"))
    assert p.room_ahead(a) == 0
    limited = line(p, "limited", rate_limit_per_second=5.0)
    assert p.room_ahead(limited) == 0, "a rate-limited subscription is not claimed ahead"


def test_a_tenant_holding_more_than_all_others_crowds_and_others_are_probed_for() -> None:
    p = policy(concurrency=8, claim_ahead=4)
    busy = line(p, "busy", max_in_flight=1000, tenant_id="a")
    other = line(p, "other", tenant_id="b")
    fill(p, busy, 2)
    fill(p, other, 2)
    assert p.claim_plan().crowding == [], "as much as the others is not crowding"
    fill(p, busy, 1)
    plan = p.claim_plan()
    assert plan.crowding == ["busy"]
    assert plan.fresh_room == max(0, p.available(other)) + p.room_ahead(other)
    assert "busy" not in plan.exclude, "it still takes its share oldest first"
    fill(p, busy, 8)
    while p.room_ahead(busy) > 0:
        p.queue(busy, ready("busy"))
    plan = p.claim_plan()
    assert plan.exclude == plan.crowding == ["busy"], "at its limit, and still crowding"


def test_a_line_of_another_tenant_running_out_asks_for_a_probe() -> None:
    p = policy(concurrency=8, claim_ahead=4)
    busy = line(p, "busy", max_in_flight=1000, tenant_id="a")
    other = line(p, "other", tenant_id="b")
    fill(p, busy, 7)
    following = ready("busy")
    p.queue(busy, following)
    assert p.claim_plan().crowding == ["busy"]
    assert p.next_after(busy, succeeded=True, stopping=False) == (busy, following)
    assert not p.take_ran_out(), "the crowding tenant's line ran out: no probe for it"
    p.queue(other, ready("other"))
    assert [lin.subscription.id for lin, _ in p.start_waiting()] == ["other"]
    assert p.take_ran_out()
    assert not p.take_ran_out(), "once"


def test_the_last_room_ahead_is_kept_for_subscriptions_holding_none_waiting() -> None:
    p = policy(concurrency=32, claim_ahead=2)
    busy = line(p, "busy", max_in_flight=1000)
    fill(p, busy, 32)
    while p.room_ahead(busy) > 0:
        p.queue(busy, ready("busy"))
    other = line(p, "other")
    assert p.room_ahead(other) == 2 * 32 - p.waiting == 2 * p.reserve


def test_a_subscription_at_its_limits_is_left_out_of_every_claim() -> None:
    p = policy(concurrency=8, claim_ahead=1)
    a = line(p, "a", max_in_flight=1)
    fill(p, a, 1)
    p.queue(a, ready("a"))
    plan = p.claim_plan()
    assert plan.exclude == ["a"]
    assert plan.room == 0


def test_the_circuit_opens_after_the_threshold_and_then_allows_one_probe() -> None:
    p = policy()
    circuits = CircuitBook(p.lines, CIRCUIT)
    a = line(p, "a")
    now = datetime.now(UTC)
    updates = circuits.record([completion("a", "pending", 500) for _ in range(3)], now)

    (update,) = updates
    assert update.consecutive_failures == 3
    assert update.circuit_open_until is not None
    assert update.circuit_open_until > now
    assert p.allowance(a) == 1, "half-open: one probe at a time"
    assert p.settle(stopping=False) == []


def test_a_gone_endpoint_is_reported_for_the_subscription() -> None:
    p = policy()
    circuits = CircuitBook(p.lines, CIRCUIT)
    line(p, "a")
    (update,) = circuits.record([completion("a", "dead", 410)], datetime.now(UTC))
    assert update.disable_reason == "gone"


def test_a_success_closes_the_circuit() -> None:
    p = policy()
    circuits = CircuitBook(p.lines, CIRCUIT)
    a = line(p, "a", consecutive_failures=5, failing_since=datetime.now(UTC))
    (update,) = circuits.record([completion("a", "succeeded", 200)], datetime.now(UTC))
    assert update.consecutive_failures == 0
    assert a.prefetches()


# -- fairness between tenants ----------------------------------------------------------


def test_a_tenant_with_many_subscriptions_hands_slots_to_a_tenant_with_one() -> None:
    """Tenant A's ten subscriptions hold every slot; tenant B's one subscription
    waits. Attempts that end hand their slots to B until the two tenants hold
    about as many: fair between tenants (by subscription, B would get one)."""
    p = policy(concurrency=20)
    many = [line(p, f"a{n}", tenant_id="A", max_in_flight=100) for n in range(10)]
    for a in many:
        fill(p, a, 2)
    assert p.tenant_in_flight == {"A": 19}  # one slot is the reserve
    b = line(p, "b", tenant_id="B", max_in_flight=100)
    for _ in range(30):
        p.queue(b, ready("b"))
    for a in many:
        p.queue(a, ready(a.subscription.id))
    handed = 0
    for a in many:  # one attempt of each ends
        after = p.next_after(a, succeeded=True, stopping=False)
        assert after is not None
        handed += after[0] is b
    assert handed == 9
    assert p.tenant_in_flight == {"A": 10, "B": 9}
    assert p.used == 19


def test_a_retry_waits_for_a_slot_when_another_tenant_holds_them_all() -> None:
    """Tenant A holds every slot, the reserve too (a subscription of A holding
    none took it), and goes on from one success to the next in the same slots.
    Tenant B's failing subscription may not be claimed ahead, but it holds
    nothing: one delivery of it (its retry) is claimed to wait for a slot, and
    the next attempt of A that ends hands its slot over."""
    p = policy(concurrency=16)
    assert p.reserve == 1
    a1 = line(p, "a1", tenant_id="A", max_in_flight=100)
    a2 = line(p, "a2", tenant_id="A", max_in_flight=100)
    assert fill(p, a1, 16) == 15
    assert p.take_slot(a2), "holding none, a2 takes the reserve"
    for a in (a1, a2):
        p.queue(a, ready(a.subscription.id))
    b = line(p, "b", tenant_id="B", consecutive_failures=1)

    plan = p.claim_plan()
    assert "b" not in plan.exclude
    assert plan.fresh_room == 1
    assert not p.take_slot(b)
    assert p.room_ahead(b) == 1, "its retry may wait for a slot"
    retry = ready("b")
    p.queue(b, retry)
    assert p.room_ahead(b) == 0, "one, not more"
    assert p.settle(stopping=False) == [], "settling keeps it waiting: no slot is free"
    assert p.queued() == {"a1", "a2", "b"}

    assert p.next_after(a2, succeeded=True, stopping=False) == (b, retry)
    assert p.tenant_in_flight == {"A": 15, "B": 1}
    assert p.room_ahead(b) == 0, "holding a slot, a failing line waits for nothing"


def test_free_slots_go_to_the_tenant_holding_fewest_first() -> None:
    p = policy(concurrency=4)
    a1, a2 = line(p, "a1", tenant_id="A"), line(p, "a2", tenant_id="A")
    b = line(p, "b", tenant_id="B")
    fill(p, a1, 1)
    for target in (a1, a2, b):
        p.queue(target, ready(target.subscription.id))
    started = p.start_waiting()
    assert [ln.subscription.id for ln, _ in started] == ["b", "a1", "a2"]
    assert p.tenant_in_flight == {"A": 3, "B": 1}


# -- circuit changes (operator events) ------------------------------------------------


def test_the_cycle_that_reaches_the_threshold_reports_the_circuit_opened() -> None:
    p = policy()
    circuits = CircuitBook(p.lines, CIRCUIT)
    line(p, "a")
    now = datetime.now(UTC)
    (first,) = circuits.record([completion("a", "pending", 500) for _ in range(2)], now)
    assert first.change is None
    (opened,) = circuits.record([completion("a", "pending", 500)], now)
    assert opened.change == CircuitChange(opened=True, consecutive_failures=3)
    (probe_failed,) = circuits.record([completion("a", "pending", 500)], now)
    assert probe_failed.change is None, "a failed probe keeps it open: nothing new"
    (closed,) = circuits.record([completion("a", "succeeded", 200)], now)
    assert closed.change == CircuitChange(opened=False, consecutive_failures=4)
    assert closed.consecutive_failures == 0


def test_a_cycle_reports_the_net_change_of_its_outcomes() -> None:
    p = policy()
    circuits = CircuitBook(p.lines, CIRCUIT)
    line(p, "a")
    now = datetime.now(UTC)
    failures = [completion("a", "pending", 500) for _ in range(3)]
    (update,) = circuits.record([*failures, completion("a", "succeeded", 200)], now)
    assert update.change is None, "opened and closed within one write: never open in the store"
    (update,) = circuits.record([*failures, completion("a", "pending", 500)], now)
    assert update.change == CircuitChange(opened=True, consecutive_failures=4)


def test_gone_is_kept_when_a_later_outcome_of_the_cycle_is_an_ordinary_failure() -> None:
    p = policy()
    circuits = CircuitBook(p.lines, CIRCUIT)
    line(p, "a")
    (update,) = circuits.record(
        [completion("a", "dead", 410), completion("a", "pending", 500)], datetime.now(UTC)
    )
    assert update.disable_reason == "gone"


def test_rewind_puts_the_circuits_back_when_their_write_failed() -> None:
    p = policy()
    circuits = CircuitBook(p.lines, CIRCUIT)
    line(p, "a")
    now = datetime.now(UTC)
    circuits.record([completion("a", "pending", 500) for _ in range(2)], now)
    (opened,) = circuits.record([completion("a", "pending", 500)], now)
    assert opened.change is not None
    circuits.rewind()  # that write failed: the store never had the circuit open
    assert p.lines["a"].circuit.consecutive_failures == 2
    (again,) = circuits.record([completion("a", "pending", 500)], now)
    assert again.change == CircuitChange(opened=True, consecutive_failures=3)


# -- runs -------------------------------------------------------------------------


def test_a_run_is_held_within_the_room_ahead_and_gives_back_its_end() -> None:
    p = policy(concurrency=4, claim_ahead=2)
    a = line(p, "a", max_in_flight=1)
    assert p.ahead_limit(a) == 2
    head = ready("a")
    assert p.take_slot(a)
    run = [ready("a") for _ in range(4)]
    back = p.attach(a, head, run)
    assert back == [r.delivery.seq for r in run[2:]], "no gap: the end of the run goes back"
    assert head.after == run[:2]
    assert sorted(p.held()) == sorted(r.delivery.seq for r in run[:2])
    assert p.room_ahead(a) == 0
    assert p.waiting == 2


def test_a_run_goes_on_after_a_success_and_back_after_a_failure() -> None:
    p = policy(concurrency=4, claim_ahead=4)
    a = line(p, "a", max_in_flight=1)
    head = ready("a")
    assert p.take_slot(a)
    run = [ready("a") for _ in range(3)]
    assert p.attach(a, head, run) == []
    done = completion("a", "succeeded", 200)
    p.follow(a, head, done)
    assert done.followed
    assert head.after is None
    after = p.next_after(a, True, False)
    assert after is not None
    assert after[1] is run[0], "the next of the run, in the same slot"
    assert run[0].after == run[1:]
    assert run[0].prev is done
    failed = completion("a", "pending", 503)
    failed.returned = p.take_run(a, run[0])
    assert failed.returned == [r.delivery.seq for r in run[1:]]
    assert p.next_after(a, False, False) is None
    assert (p.waiting, a.following, p.held()) == (0, 0, [])


def test_a_run_given_back_before_its_predecessors_outcome_lets_that_outcome_move_the_line() -> None:
    p = policy(concurrency=4, claim_ahead=4)
    a = line(p, "a", max_in_flight=1)
    head = ready("a")
    assert p.take_slot(a)
    run = [ready("a"), ready("a")]
    p.attach(a, head, run)
    done = completion("a", "succeeded", 200)
    p.follow(a, head, done)
    p.free_slot(a)  # the slot went elsewhere: the follower waits
    p.drop_waiting(a)
    assert not done.followed, "the outcome readies the line"
    assert sorted(p.released()) == sorted(r.delivery.seq for r in run)
    assert (p.waiting, a.following) == (0, 0)


def test_a_claim_asks_for_runs_only_where_deliveries_may_be_held() -> None:
    p = policy(concurrency=8, claim_ahead=4)
    line(p, "healthy")
    line(p, "limited", rate_limit_per_second=5)
    plan = p.claim_plan()
    assert plan.run == 5
    assert plan.single == ["limited"]


def test_claimed_work_is_grouped_into_each_lines_head_and_run() -> None:
    def work(sid: str, key: str | None) -> Work:
        r = ready(sid)
        r.delivery.ordering_key = key
        return Work(r.delivery, r.event)

    a1, none1, a2, b1, other_sub, a3, none2 = (
        work("sub_1", "a"),
        work("sub_1", None),
        work("sub_1", "a"),
        work("sub_1", "b"),
        work("sub_2", "a"),
        work("sub_1", "a"),
        work("sub_1", None),
    )
    grouped = runs_of([a1, none1, a2, b1, other_sub, a3, none2])
    assert grouped == [(a1, [a2, a3]), (none1, []), (b1, []), (other_sub, []), (none2, [])]


# -- the subscriptions' settings ------------------------------------------------------


def test_subscriptions_in_use_are_read_again_before_they_go_stale() -> None:
    p = policy()
    p.load("a", subscription("a"), 100.0)
    p.load("b", subscription("b"), 100.5)
    assert p.stale(["a"], 100.6) == set(), "fresh: the delivery does not wait for a read"
    assert p.warming(100.6) == set(), "neither goes stale within the next moment"
    assert p.warming(100.8) == {"a"}, "a goes stale within the next moment"
    assert p.warming(101.3) == {"a", "b"}
    assert p.warming(100.6 + KEEP_WARM_SECONDS + 0.1) == set(), "no delivery for a while"


def test_a_read_begun_before_a_change_was_reported_leaves_the_subscription_stale() -> None:
    p = policy()
    p.load("a", subscription("a"), 100.0)
    p.mark_stale("a", 100.2)  # changed while a read begun at 100.1 was under way
    p.load("a", subscription("a"), 100.1)
    assert p.stale(["a"], 100.3) == {"a"}
    p.load("a", subscription("a", max_in_flight=5), 100.3)
    assert p.stale(["a"], 100.4) == set()
    assert p.lines["a"].subscription.max_in_flight == 5


def test_a_subscription_read_again_unchanged_keeps_its_keys_and_target() -> None:
    p = policy()
    sub = subscription("a")
    p.load("a", sub, 100.0)
    a = p.lines["a"]
    target = object()
    a.keys, a.target = ["key"], target  # type: ignore[list-item, assignment]
    p.load("a", replace(sub), 101.0)
    assert (a.keys, a.target) == (["key"], target), "unchanged: nothing to work out again"
    p.load("a", replace(sub, url="http://receiver.test/moved"), 102.0)
    assert (a.keys, a.target) == ([], None), "changed: worked out again at the next attempt"
