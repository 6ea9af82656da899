"""Event-type filters of subscriptions: ``*``, a trailing ``.*``, or an exact name."""

from __future__ import annotations

from collections.abc import Iterable


def type_matches(pattern: str, event_type: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def is_exact(pattern: str) -> bool:
    """Whether a pattern names one event type (no wildcard)."""
    return pattern != "*" and not pattern.endswith(".*")


def any_matches(patterns: Iterable[str], event_type: str) -> bool:
    return any(type_matches(p, event_type) for p in patterns)
