"""The token bucket a line's ``rate_limit_per_second`` uses (see app.domain.limits)."""

from __future__ import annotations

from app.domain.limits import TokenBucket

__all__ = ["TokenBucket"]
