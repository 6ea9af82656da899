"""What happens after an attempt: pure policy, no I/O.

``decide(attempt, outcome, schedule, now)`` returns :class:`Succeeded`,
:class:`Retry` (with the time of the next attempt) or :class:`GiveUp`.
The schedule holds the delays between attempts, so a delivery gets
``len(schedule) + 1`` attempts in all.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

JITTER = 0.2
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")
_RNG = random.Random()
RETRY_AFTER_CAP_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt got back: a status code, or an error before any status;
    ``accepted`` when a destination without status codes (a broker) took it."""

    status_code: int | None = None
    error: str | None = None
    retry_after: str | None = None
    accepted: bool = False


@dataclass(frozen=True, slots=True)
class Succeeded:
    pass


@dataclass(frozen=True, slots=True)
class Retry:
    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No more attempts: the delivery becomes a dead letter (the DLQ's entry)."""

    reason: str
    gone: bool = False  # 410: the subscription is disabled too


Decision = Succeeded | Retry | GiveUp


def decide(
    attempt: int,
    outcome: Outcome,
    schedule: Sequence[float],
    now: datetime,
    rng: random.Random | None = None,
) -> Decision:
    """The decision after attempt number ``attempt`` (1-based) ended with ``outcome``."""
    status = outcome.status_code
    if outcome.accepted or (status is not None and 200 <= status < 300):
        return Succeeded()
    if status == 410:
        return GiveUp("the endpoint answered 410 Gone", gone=True)
    if attempt > len(schedule):
        return GiveUp(f"gave up after {attempt} attempts")
    delay = jittered(schedule[attempt - 1], rng or _RNG)
    if status in (429, 503) and outcome.retry_after is not None:
        hinted = retry_after_seconds(outcome.retry_after, now)
        if hinted is not None:
            delay = max(delay, hinted)
    return Retry(now + timedelta(seconds=delay))


def jittered(delay: float, rng: random.Random) -> float:
    """``delay`` spread uniformly within ±20 %."""
    return delay * rng.uniform(1 - JITTER, 1 + JITTER)


def retry_after_seconds(value: str, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta-seconds or HTTP date), capped at 1 h."""
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), RETRY_AFTER_CAP_SECONDS)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)
