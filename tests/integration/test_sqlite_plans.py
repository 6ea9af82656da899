"""SQLite's plans for the worker's hot statements search indexes, never scan a table.

These statements run as plain SQL on the driver (``app.store.driver``), so
SQLAlchemy cannot change their shape; the plan is what keeps a cycle cheap at
any backlog (a scan of 20,000 deliveries or events per claim was 10 ms).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.store.deliveries import _FINISH, _RECORD_ATTEMPT, _SQLITE_EVENTS, CLAIM
from app.store.lines import _PROMOTE

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

STATEMENTS = {
    "claim": (
        CLAIM["sqlite"].replace(":exclude", "(:x0, :x1)"),
        {"owner": "w", "now": "2026", "lease": "2026", "limit": 10, "x0": "a", "x1": "b"},
    ),
    "claimed events": (_SQLITE_EVENTS.format(marks="?, ?"), ["evt_a", "evt_b"]),
    "finish": (
        _FINISH.text,
        dict.fromkeys(
            [
                "status",
                "next_attempt_at",
                "status_code",
                "summary",
                "completed_at",
                "dead_lettered_at",
                "seq",
                "owner",
            ],
            None,
        ),
    ),
    "record attempt": (
        _RECORD_ATTEMPT.text,
        dict.fromkeys(
            ["started_at", "duration_ms", "status_code", "error", "response_body", "seq", "owner"],
            None,
        ),
    ),
    "promote head": (_PROMOTE.text, {"sub": "sub_a", "key": "k"}),
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
