"""Event-type filters of subscriptions: ``*``, a trailing ``.*``, or an exact name.

Reserved types (operator events, ``eventrelay.…``) match only a pattern that
names them: ``eventrelay.*``, a narrower ``eventrelay.….*``, or the exact
type; ``*`` does not match them.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.domain.events import RESERVED_PREFIX


def type_matches(pattern: str, event_type: str) -> bool:
    if pattern == "*":
        return not event_type.startswith(RESERVED_PREFIX)
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def is_exact(pattern: str) -> bool:
    """Whether a pattern names one event type (no wildcard)."""
    return pattern != "*" and not pattern.endswith(".*")


def any_matches(patterns: Iterable[str], event_type: str) -> bool:
    return any(type_matches(p, event_type) for p in patterns)
