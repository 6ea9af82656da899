"""The token bucket behind a subscription's ``rate_limit_per_second`` and a tenant's
``ingest_rate_per_second``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second with a burst of one second's worth."""

    rate: float
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = max(self.rate, 1.0)

    def _refill(self, now: float) -> None:
        capacity = max(self.rate, 1.0)
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self, now: float | None = None) -> int:
        self._refill(time.monotonic() if now is None else now)
        return int(self.tokens)

    def take(self, now: float | None = None) -> bool:
        self._refill(time.monotonic() if now is None else now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def seconds_until_token(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def take_many(self, count: int, now: float | None = None) -> bool:
        """``count`` tokens at once, or none (a request refused whole)."""
        self._refill(time.monotonic() if now is None else now)
        if self.tokens >= count:
            self.tokens -= count
            return True
        return False

    def give_back(self, count: int) -> None:
        """Tokens taken for what turned out to cost nothing (an idempotent replay)."""
        self.tokens = min(max(self.rate, 1.0), self.tokens + count)

    def seconds_until(self, count: int) -> float:
        """How long until ``count`` tokens are there (never, beyond the capacity: inf)."""
        if count > max(self.rate, 1.0):
            return float("inf")
        return max(0.0, (count - self.tokens) / self.rate)
