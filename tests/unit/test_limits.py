"""``TokenBucket``: ``rate`` tokens a second with a burst of one second's worth."""

from __future__ import annotations

import pytest

from app.worker.limits import TokenBucket


def _drain(bucket: TokenBucket, now: float) -> int:
    taken = 0
    while bucket.take(now):
        taken += 1
    return taken


@pytest.mark.parametrize(("rate", "burst"), [(1, 1), (5, 5), (10, 10), (100, 100), (2.5, 2)])
def test_burst_is_one_seconds_worth(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate, stamp=0.0)
    assert bucket.available(0.0) == burst
    assert _drain(bucket, 0.0) == burst
    assert bucket.available(0.0) == 0


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_slow_rates_still_allow_one_request(rate: float) -> None:
    bucket = TokenBucket(rate, stamp=0.0)
    assert _drain(bucket, 0.0) == 1
    assert not bucket.take(0.0)
    assert not bucket.take(1 / rate - 0.01)
    assert bucket.take(1 / rate)


@pytest.mark.parametrize("rate", [1, 4, 10, 50])
def test_refill_rate(rate: float) -> None:
    bucket = TokenBucket(rate, stamp=0.0)
    _drain(bucket, 0.0)
    assert bucket.available(0.5) == int(rate * 0.5)
    # Over ten seconds, a drained bucket lets through the burst plus rate per second.
    taken = sum(_drain(bucket, t / 100) for t in range(50, 1001))
    assert abs(taken - rate * 10) <= 1


def test_idle_time_does_not_grow_the_burst() -> None:
    bucket = TokenBucket(10, stamp=0.0)
    assert bucket.available(3600.0) == 10
    assert _drain(bucket, 3600.0) == 10


@pytest.mark.parametrize(
    ("rate", "elapsed", "expected"),
    [
        (10, 0.0, 0.1),
        (10, 0.05, 0.05),
        (2, 0.0, 0.5),
        (0.5, 0.0, 2.0),
        (0.5, 1.0, 1.0),
        (10, 0.1, 0.0),
        (10, 5.0, 0.0),
    ],
)
def test_seconds_until_token(rate: float, elapsed: float, expected: float) -> None:
    bucket = TokenBucket(rate, stamp=0.0)
    _drain(bucket, 0.0)
    bucket.available(elapsed)  # refill as of ``elapsed``
    assert bucket.seconds_until_token() == pytest.approx(expected)


def test_seconds_until_token_with_tokens_left_is_zero() -> None:
    bucket = TokenBucket(3, stamp=0.0)
    assert bucket.seconds_until_token() == 0.0


def test_tokens_never_go_negative() -> None:
    bucket = TokenBucket(1, stamp=0.0)
    for _ in range(10):
        bucket.take(0.0)
    assert bucket.tokens >= 0
    assert bucket.take(1.0)
