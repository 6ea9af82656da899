"""Counting rows no further than a cap: an index range read up to ``cap``
entries, whatever the table holds (``app.domain.counts.Count`` shows it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, literal, select


def capped_count(rows: Select[Any], cap: int) -> Select[int]:
    """``SELECT count(*) FROM (rows LIMIT cap)``: ``rows`` names the matching
    rows (their columns do not matter) and is read only until ``cap``."""
    limited = rows.with_only_columns(literal(1)).limit(cap).subquery()
    return select(func.count()).select_from(limited)
