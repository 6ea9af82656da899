"""The circuit rule for a subscription that keeps failing.

After ``failure_threshold`` failed attempts in a row (any of its deliveries,
retries included) the circuit opens: none of its deliveries is attempted for
a cool-down that starts at ``base_cooldown`` and doubles with every further
trip, up to ``max_cooldown``. When it ends, one probe at a time goes out; a
success closes the circuit, a failure opens it again. A subscription that has
not had a single success for ``disable_after`` is disabled
(``disabled_reason: "failing"``).

The circuit *opens* when the failures reach the threshold and *closes* at the
first success after that (:func:`change`); a failed probe keeps it open. These
two moments are reported as operator events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    failure_threshold: int = 20
    base_cooldown: timedelta = timedelta(seconds=30)
    max_cooldown: timedelta = timedelta(minutes=10)
    disable_after: timedelta = timedelta(days=5)


@dataclass(frozen=True, slots=True)
class CircuitState:
    consecutive_failures: int
    failing_since: datetime | None
    open_until: datetime | None
    disable: bool = False


CLOSED = CircuitState(0, None, None)


def after_success() -> CircuitState:
    return CLOSED


def after_failures(
    previous: CircuitState, failures: int, now: datetime, policy: CircuitPolicy
) -> CircuitState:
    """The state after ``failures`` more failed attempts ending at ``now``."""
    count = previous.consecutive_failures + failures
    since = previous.failing_since or now
    if now - since >= policy.disable_after:
        return CircuitState(count, since, None, disable=True)
    if count < policy.failure_threshold:
        return CircuitState(count, since, previous.open_until)
    trips = count - policy.failure_threshold  # each failed probe is one more trip
    cooldown = min(policy.base_cooldown * (2 ** min(trips, 16)), policy.max_cooldown)
    return CircuitState(count, since, now + cooldown)


def is_half_open(consecutive_failures: int, policy: CircuitPolicy) -> bool:
    """Past the threshold and not open: only one probe may be in flight."""
    return consecutive_failures >= policy.failure_threshold


@dataclass(frozen=True, slots=True)
class CircuitChange:
    """The circuit opened (``consecutive_failures``: the count that opened it) or
    closed (the count the closing success ended)."""

    opened: bool
    consecutive_failures: int


def change(
    before: CircuitState, after: CircuitState, policy: CircuitPolicy
) -> CircuitChange | None:
    """Whether the circuit opened or closed between two states. A state that
    disables the subscription reports that instead (None here)."""
    if after.disable:
        return None
    was_open = is_half_open(before.consecutive_failures, policy)
    now_open = is_half_open(after.consecutive_failures, policy)
    if now_open and not was_open:
        return CircuitChange(True, after.consecutive_failures)
    if was_open and not now_open:
        return CircuitChange(False, before.consecutive_failures)
    return None
