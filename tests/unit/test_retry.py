"""``decide``: what follows an attempt, per the Delivery table of API.md."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from app.domain.retry import (
    RETRY_AFTER_CAP_SECONDS,
    GiveUp,
    Outcome,
    Retry,
    Succeeded,
    decide,
    retry_after_seconds,
)

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
SCHEDULE = (5.0, 300.0, 1800.0)


def _seconds_until(decision: object) -> float:
    assert isinstance(decision, Retry), decision
    return (decision.at - NOW).total_seconds()


def _within_jitter(seconds: float, delay: float) -> bool:
    return delay * 0.8 - 1e-9 <= seconds <= delay * 1.2 + 1e-9


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("attempt", [1, 2, len(SCHEDULE) + 1])
def test_2xx_succeeds_on_any_attempt(status: int, attempt: int) -> None:
    assert decide(attempt, Outcome(status_code=status), SCHEDULE, NOW) == Succeeded()


@pytest.mark.parametrize("attempt", [1, len(SCHEDULE), len(SCHEDULE) + 1])
def test_410_dead_letters_and_marks_gone(attempt: int) -> None:
    decision = decide(attempt, Outcome(status_code=410), SCHEDULE, NOW)
    assert isinstance(decision, GiveUp)
    assert decision.gone is True


RETRIED = [
    Outcome(status_code=500),
    Outcome(status_code=502),
    Outcome(status_code=404),
    Outcome(status_code=400),
    Outcome(status_code=401),
    Outcome(status_code=301),
    Outcome(status_code=302),
    Outcome(status_code=308),
    Outcome(status_code=199),
    Outcome(status_code=300),
    Outcome(status_code=429),
    Outcome(status_code=503),
    Outcome(error="timed out after 15000 ms"),
    Outcome(error="ClientConnectorError: connection refused"),
]


@pytest.mark.parametrize("outcome", RETRIED, ids=lambda o: str(o.status_code or o.error))
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_failures_are_retried_on_the_schedule(outcome: Outcome, attempt: int) -> None:
    seconds = _seconds_until(decide(attempt, outcome, SCHEDULE, NOW, random.Random(attempt)))
    assert _within_jitter(seconds, SCHEDULE[attempt - 1]), seconds


@pytest.mark.parametrize("outcome", RETRIED, ids=lambda o: str(o.status_code or o.error))
def test_schedule_exhausted_dead_letters(outcome: Outcome) -> None:
    decision = decide(len(SCHEDULE) + 1, outcome, SCHEDULE, NOW)
    assert isinstance(decision, GiveUp)
    assert decision.gone is False


def test_empty_schedule_means_one_attempt() -> None:
    assert isinstance(decide(1, Outcome(status_code=500), (), NOW), GiveUp)
    assert decide(1, Outcome(status_code=200), (), NOW) == Succeeded()


def test_fractional_delays() -> None:
    seconds = _seconds_until(decide(1, Outcome(status_code=500), (0.2,), NOW, random.Random(1)))
    assert _within_jitter(seconds, 0.2)


@pytest.mark.parametrize("delay", [5.0, 300.0, 36000.0])
def test_jitter_is_uniform_within_20_percent(delay: float) -> None:
    rng = random.Random(20261126)
    samples = [
        _seconds_until(decide(1, Outcome(status_code=500), (delay,), NOW, rng)) for _ in range(2000)
    ]
    assert all(_within_jitter(s, delay) for s in samples)
    assert len(set(samples)) > 1000  # it varies
    # Spread over the whole band, not bunched at one end.
    assert min(samples) < delay * 0.82
    assert max(samples) > delay * 1.18
    below = sum(s < delay for s in samples)
    assert 800 < below < 1200


def test_jitter_without_a_given_rng_varies() -> None:
    samples = {_seconds_until(decide(1, Outcome(error="x"), (100.0,), NOW)) for _ in range(50)}
    assert len(samples) > 1
    assert all(_within_jitter(s, 100.0) for s in samples)


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


RETRY_AFTER: list[tuple[str, float | None]] = [
    ("120", 120.0),
    ("0", 0.0),
    (" 30 ", 30.0),
    ("3600", 3600.0),
    ("3601", RETRY_AFTER_CAP_SECONDS),
    ("99999999", RETRY_AFTER_CAP_SECONDS),
    (_http_date(NOW + timedelta(seconds=90)), 90.0),
    (_http_date(NOW + timedelta(hours=5)), RETRY_AFTER_CAP_SECONDS),
    (_http_date(NOW - timedelta(seconds=90)), 0.0),
    ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),  # obsolete RFC 850 form, in the past
    ("", None),
    ("soon", None),
    ("-5", None),
    ("1.5", None),
    ("1e3", None),
    ("0x10", None),
    ("Mon, 32 Foo 2026 99:00:00 GMT", None),
    ("²", None),  # str.isdigit() is true for it, float() is not
    ("³", None),
    ("①", None),
]


@pytest.mark.parametrize(("value", "expected"), RETRY_AFTER, ids=[v for v, _ in RETRY_AFTER])
def test_retry_after_values(value: str, expected: float | None) -> None:
    assert retry_after_seconds(value, NOW) == expected


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_for_429_and_503(status: int) -> None:
    outcome = Outcome(status_code=status, retry_after="120")
    assert _seconds_until(decide(1, outcome, SCHEDULE, NOW)) == 120.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_http_date_is_honoured(status: int) -> None:
    outcome = Outcome(status_code=status, retry_after=_http_date(NOW + timedelta(minutes=10)))
    assert _seconds_until(decide(1, outcome, SCHEDULE, NOW)) == 600.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_capped_at_one_hour(status: int) -> None:
    outcome = Outcome(status_code=status, retry_after="86400")
    assert _seconds_until(decide(1, outcome, SCHEDULE, NOW)) == 3600.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_never_shortens_the_schedule(status: int) -> None:
    # A hint shorter than the scheduled delay (or in the past) does not bring the retry forward.
    for hint in ("1", _http_date(NOW - timedelta(hours=1))):
        outcome = Outcome(status_code=status, retry_after=hint)
        seconds = _seconds_until(decide(2, outcome, SCHEDULE, NOW, random.Random(3)))
        assert _within_jitter(seconds, SCHEDULE[1]), (hint, seconds)


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("hint", ["garbage", "", "-1", "²", "①", "Mon, 99 Bad 2026"])
def test_unusable_retry_after_falls_back_to_the_schedule(status: int, hint: str) -> None:
    outcome = Outcome(status_code=status, retry_after=hint)
    seconds = _seconds_until(decide(1, outcome, SCHEDULE, NOW, random.Random(5)))
    assert _within_jitter(seconds, SCHEDULE[0]), seconds


@pytest.mark.parametrize("status", [500, 502, 504, 404, 301, 200])
def test_retry_after_is_ignored_for_other_statuses(status: int) -> None:
    outcome = Outcome(status_code=status, retry_after="3000")
    decision = decide(1, outcome, SCHEDULE, NOW, random.Random(7))
    if status == 200:
        assert decision == Succeeded()
    else:
        assert _within_jitter(_seconds_until(decision), SCHEDULE[0])


def test_retry_after_does_not_outlast_the_schedule() -> None:
    """The hint moves the next attempt; it never adds attempts."""
    outcome = Outcome(status_code=429, retry_after="60")
    assert isinstance(decide(len(SCHEDULE) + 1, outcome, SCHEDULE, NOW), GiveUp)


def test_next_attempt_is_no_sooner_than_retry_after_whatever_the_jitter() -> None:
    rng = random.Random(11)
    for _ in range(500):
        outcome = Outcome(status_code=503, retry_after="7")
        assert _seconds_until(decide(1, outcome, (6.0,), NOW, rng)) >= 7.0
