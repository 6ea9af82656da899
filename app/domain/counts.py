"""Counts that stop early: a page says "10,000+" rather than read every row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Count:
    """How many rows matched, counted no further than ``cap``: at ``cap`` there
    may be more (shown as ``10,000+``)."""

    value: int
    cap: int

    @property
    def more(self) -> bool:
        return self.value >= self.cap

    def __bool__(self) -> bool:
        return self.value > 0

    def __str__(self) -> str:
        return f"{self.value:,}+" if self.more else f"{self.value:,}"
