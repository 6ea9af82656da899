"""The token bucket behind a subscription's ``rate_limit_per_second`` (one per line)."""

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
