"""SQLite's plans for the worker's hot statements search indexes, never scan a table.

These statements run as plain SQL on the driver (``app.store.driver``), so
SQLAlchemy cannot change their shape; the plan is what keeps a cycle cheap at
any backlog (a scan of 20,000 deliveries or events per claim was 10 ms).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from app.store.deliveries import _FINISH, _RECORD_ATTEMPT, _SQLITE_EVENTS, CLAIM
from app.store.lines import _BUSY_SQL, _PROMOTE

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _named(sql: str) -> tuple[str, dict[str, None]]:
    """A statement with ``:name`` parameters, each bound to NULL (the plan is the question)."""
    return sql, dict.fromkeys(re.findall(r"(?<!:):(\w+)", sql))


STATEMENTS = {
    "claim": (
        CLAIM["sqlite"].replace(":exclude", "(:x0, :x1)"),
        {"owner": "w", "now": "2026", "lease": "2026", "limit": 10, "x0": "a", "x1": "b"},
    ),
    "claimed events": (_SQLITE_EVENTS.format(marks="?, ?"), ["evt_a", "evt_b"]),
    "finish": _named(_FINISH.text),
    "record attempt": _named(_RECORD_ATTEMPT.text),
    "promote head": _named(_PROMOTE.text),
    # The ingest flush's busy-lines query, as it runs on the driver's thread.
    "busy lines": (_BUSY_SQL.format(subs="(?, ?)", keys="(?, ?)"), ["sub_a", "sub_b", "k1", "k2"]),
}


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_no_statement_scans_a_table(database_url: str, name: str) -> None:
    path = Path(database_url.split(":///", 1)[1])
    sql, params = STATEMENTS[name]
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan, name
    scans = [step for step in plan if step.startswith("SCAN")]
    assert not scans, f"{name}: {plan}"
