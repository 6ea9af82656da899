"""The circuits of the lines: finished attempts carried into each
subscription's circuit, the changes the cycle writes, and whether those may
report operator events.

Kept beside the line policy (:mod:`app.worker.lines`), which reads a line's
circuit to decide its slots; the rules themselves are :mod:`app.domain.circuit`.
No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from app.domain.circuit import CircuitPolicy, CircuitState, after_failures, after_success, change
from app.store.subscriptions import CircuitUpdate
from app.store.work import Completion
from app.worker.lines import Line


class CircuitBook:
    def __init__(self, lines: Mapping[str, Line], policy: CircuitPolicy) -> None:
        self._lines = lines  # the line policy's, read at each call
        self._policy = policy
        self._recorded: dict[str, CircuitState] = {}  # circuits before the last record()

    def record(self, completions: Sequence[Completion], now: datetime) -> list[CircuitUpdate]:
        """Carry finished attempts into the circuits; the changes to write. One
        update per subscription: its state after the last outcome, disabled if any
        outcome disabled it, and whether its circuit opened or closed across the
        cycle (the state written is the last one, so that is what is reported)."""
        changed: dict[str, CircuitUpdate] = {}
        start: dict[str, CircuitState] = {}
        for c in completions:
            sid = c.delivery.subscription_id
            line = self._lines.get(sid)
            if line is None:
                continue
            before = line.circuit
            start.setdefault(sid, before)
            gone = c.status == "dead" and c.status_code == 410
            if c.status == "succeeded":
                line.circuit = after_success()
            else:
                line.circuit = after_failures(before, 1, now, self._policy)
            earlier = changed.get(sid)
            if (line.circuit is not before and line.circuit != before) or gone or earlier:
                reason = "gone" if gone else ("failing" if line.circuit.disable else None)
                changed[sid] = CircuitUpdate(
                    sid,
                    line.circuit.consecutive_failures,
                    line.circuit.failing_since,
                    line.circuit.open_until,
                    (earlier.disable_reason if earlier else None) or reason,
                    change(start[sid], line.circuit, self._policy),
                )
        self._recorded = start
        return list(changed.values())

    def rewind(self) -> None:
        """The write of the last :meth:`record`'s changes failed: its circuits are
        as the store still has them, so the next write reports what it moves."""
        for sid, state in self._recorded.items():
            line = self._lines.get(sid)
            if line is not None:
                line.circuit = state
        self._recorded = {}


def may_report(finished: Sequence[Completion], updates: Sequence[CircuitUpdate]) -> bool:
    """Whether a cycle's outcomes may have made operator events (a circuit that
    opened or closed, a subscription disabled, a dead letter)."""
    return any(u.change is not None or u.disable_reason for u in updates) or any(
        c.status == "dead" for c in finished
    )
