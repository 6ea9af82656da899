"""The circuit rule of a subscription that keeps failing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.domain.circuit import (
    CircuitChange,
    CircuitPolicy,
    CircuitState,
    after_failures,
    after_success,
    change,
    is_half_open,
)

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
POLICY = CircuitPolicy(
    failure_threshold=5,
    base_cooldown=timedelta(seconds=30),
    max_cooldown=timedelta(minutes=10),
    disable_after=timedelta(days=5),
)
CLOSED = CircuitState(0, None, None)


def test_below_the_threshold_the_circuit_stays_closed() -> None:
    state = after_failures(CLOSED, 4, NOW, POLICY)
    assert state == CircuitState(4, NOW, None)
    assert not is_half_open(state.consecutive_failures, POLICY)


def test_failures_accumulate_across_calls() -> None:
    state = CLOSED
    for i in range(1, 5):
        state = after_failures(state, 1, NOW + timedelta(seconds=i), POLICY)
        assert state.open_until is None
        assert state.consecutive_failures == i
    assert state.failing_since == NOW + timedelta(seconds=1)  # the first failure
    state = after_failures(state, 1, NOW + timedelta(seconds=5), POLICY)
    assert state.open_until == NOW + timedelta(seconds=5 + 30)


def test_reaching_the_threshold_opens_for_the_base_cooldown() -> None:
    state = after_failures(CLOSED, 5, NOW, POLICY)
    assert state.open_until == NOW + timedelta(seconds=30)
    assert not state.disable


@pytest.mark.parametrize(
    ("failures", "cooldown"),
    [
        (5, 30),
        (6, 60),
        (7, 120),
        (8, 240),
        (9, 480),
        (10, 600),  # 960 capped at 10 minutes
        (11, 600),
        (40, 600),
        (10_000, 600),
    ],
)
def test_cooldown_doubles_with_each_trip_up_to_the_cap(failures: int, cooldown: int) -> None:
    state = after_failures(CLOSED, failures, NOW, POLICY)
    assert state.open_until == NOW + timedelta(seconds=cooldown)


def test_failed_probes_double_the_cooldown() -> None:
    state = after_failures(CLOSED, 5, NOW, POLICY)
    cooldowns = []
    for _ in range(6):
        assert state.open_until is not None
        probe_at = state.open_until
        state = after_failures(state, 1, probe_at, POLICY)
        assert state.open_until is not None
        cooldowns.append((state.open_until - probe_at).total_seconds())
    assert cooldowns == [60, 120, 240, 480, 600, 600]


def test_half_open_past_the_threshold() -> None:
    assert not is_half_open(0, POLICY)
    assert not is_half_open(4, POLICY)
    assert is_half_open(5, POLICY)
    assert is_half_open(50, POLICY)


def test_success_resets_everything() -> None:
    assert after_success() == CLOSED
    failing = after_failures(CLOSED, 12, NOW, POLICY)
    assert failing.open_until is not None
    after = after_failures(after_success(), 1, NOW + timedelta(hours=1), POLICY)
    assert after == CircuitState(1, NOW + timedelta(hours=1), None)


def test_disabled_after_a_long_time_without_success() -> None:
    since = NOW - timedelta(days=5)
    state = after_failures(CircuitState(3, since, None), 1, NOW, POLICY)
    assert state.disable
    assert state.failing_since == since


def test_not_disabled_just_before_the_deadline() -> None:
    since = NOW - timedelta(days=5) + timedelta(seconds=1)
    state = after_failures(CircuitState(3, since, None), 1, NOW, POLICY)
    assert not state.disable


def test_disabling_does_not_need_the_threshold() -> None:
    """Slow, sparse failures for days disable too, even below the threshold."""
    state = CLOSED
    for day in (0, 2, 4):
        state = after_failures(state, 1, NOW + timedelta(days=day), POLICY)
        assert not state.disable
    state = after_failures(state, 1, NOW + timedelta(days=5), POLICY)
    assert state.consecutive_failures < POLICY.failure_threshold
    assert state.disable


def test_success_restarts_the_disable_clock() -> None:
    state = after_failures(CLOSED, 1, NOW, POLICY)
    state = after_success()
    state = after_failures(state, 1, NOW + timedelta(days=5), POLICY)
    assert not state.disable
    assert state.failing_since == NOW + timedelta(days=5)


def test_default_policy() -> None:
    policy = CircuitPolicy()
    assert policy.failure_threshold == 20
    assert policy.base_cooldown == timedelta(seconds=30)
    assert policy.max_cooldown == timedelta(minutes=10)
    assert policy.disable_after == timedelta(days=5)


def test_change_reports_opening_and_closing_only() -> None:
    policy = CircuitPolicy(failure_threshold=3)
    now = datetime.now(UTC)
    two = CircuitState(2, now, None)
    three = CircuitState(3, now, now + timedelta(seconds=30))
    four = CircuitState(4, now, now + timedelta(seconds=60))
    assert change(CLOSED, two, policy) is None
    assert change(two, three, policy) == CircuitChange(True, 3)
    assert change(three, four, policy) is None
    assert change(four, CLOSED, policy) == CircuitChange(False, 4)
    assert change(two, CLOSED, policy) is None, "never opened: nothing closes"
    assert change(two, CircuitState(3, now, None, disable=True), policy) is None
