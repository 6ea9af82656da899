"""SQLite's plans for the worker's hot statements search indexes, never scan a table.

These statements run as plain SQL on the driver (``app.store.driver``), so
SQLAlchemy cannot change their shape; the plan is what keeps a cycle cheap at
any backlog (a scan of 20,000 deliveries or events per claim was 10 ms).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.store.claims import (
    CLAIM,
    CLAIM_RESUMING,
    SQLITE_CLAIMED,
    SQLITE_CLAIMED_LARGE_DATA,
    SQLITE_LEASE,
    SQLITE_RUNS,
)
from app.store.fanout import SELECT_SUBSCRIBERS
from app.store.ingest import _SQLITE_READS
from app.store.leases import SQLITE_GIVE_BACK
from app.store.lines import SQLITE_BUSY, SQLITE_PROMOTE_ALL
from app.store.outcomes import (
    OUTCOME_FIELDS,
    SQLITE_FINISH_ALL,
    SQLITE_RECORD_ATTEMPTS,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


# What a statement brings its rows in (VALUES lists, JSON arrays) or has just
# selected (a subquery's result): scanning those is the point.
ROW_LISTS = {
    "SCAN 2 CONSTANT ROWS",
    "SCAN CONSTANT ROW",
    "SCAN o",
    "SCAN line",
    "SCAN head",
    # The claim's walks: what each took.
    "SCAN fresh",
    "SCAN oldest",
    "SCAN rest",
    # The resumed subscriptions named, and the parked walk's rows merged with
    # the oldest walk's (a sort of at most twice the limit).
    "SCAN r VIRTUAL TABLE INDEX 1:",
    "SCAN parked",
    "SCAN due",
    # The runs: the heads the claim took, then the candidates found.
    "SCAN heads",
    "SCAN candidates",
    # The fresh walk's window, newest first, and its check that some
    # subscription is left outside the crowding and excluded ones (read until
    # the first such).
    "SCAN w",
    "SCAN other USING COVERING INDEX sqlite_autoindex_subscriptions_1",
    # The flush reads every subscription that is not disabled: a small table, read whole.
    "SCAN subscriptions USING INDEX sqlite_autoindex_subscriptions_1",
}


def _scans_a_table(step: str) -> bool:
    return (
        step.startswith("SCAN")
        and step not in ROW_LISTS
        and "SCAN json_each" not in step
        and not step.startswith("SCAN (subquery-")
    )


WIDTH = len(OUTCOME_FIELDS)
OUTCOMES = ", ".join(["(" + ", ".join("?" * WIDTH) + ")"] * 2)  # two rows of a cycle
CLAIM_PARAMS = {
    "owner": "w",
    "now": "2026",
    "lease": "2026",
    "limit": 10,
    "fresh": 4,
    "oldest": 10,
    "exclude": '["a", "b"]',
    "crowding": '["c"]',
}
STATEMENTS = {
    # Both walks: the fresh one (newest first, past the crowding tenant) and the oldest.
    "claim": (CLAIM["sqlite"], CLAIM_PARAMS),
    # With the parked walk: a resumed subscription's parked deliveries, on their index.
    "claim resuming": (CLAIM_RESUMING["sqlite"], {**CLAIM_PARAMS, "resumed": '["r"]'}),
    "lease": (SQLITE_LEASE, {"owner": "w", "lease": "2026", "seqs": "[1, 2]"}),
    # The heads' runs, each line walked on the line index.
    "runs": (
        SQLITE_RUNS,
        {"seqs": "[1, 2]", "now": "2026", "followers": 7, "single": '["a"]', "room": 10},
    ),
    "give back": (SQLITE_GIVE_BACK, {"owner": "w", "seqs": "[1, 2]"}),
    "claimed with events": (SQLITE_CLAIMED, {"seqs": "[1, 2]"}),
    "claimed large data": (SQLITE_CLAIMED_LARGE_DATA, {"seqs": "[1, 2]"}),
    "finish": (SQLITE_FINISH_ALL.format(rows=OUTCOMES), [None] * 2 * WIDTH),
    "record attempts": (SQLITE_RECORD_ATTEMPTS.format(rows=OUTCOMES), [None] * 2 * WIDTH),
    "promote heads": (SQLITE_PROMOTE_ALL.format(rows="(?, ?), (?, ?)"), ["a", "k", "b", "k"]),
    # The ingest flush's reads (keys and subscriptions) and busy-lines query.
    "flush reads": (
        _SQLITE_READS.format(
            tenants="(?)", marks="(?, ?)", subscriptions=SELECT_SUBSCRIBERS.format(tenants="(?)")
        ),
        ["default", "k1", "k2", "default"],
    ),
    "busy lines": (
        SQLITE_BUSY.format(rows="(?, ?), (?, ?)"),
        ["sub_a", "k1", "sub_b", "k2"],
    ),
}


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_no_statement_scans_a_table(database_url: str, name: str) -> None:
    path = Path(database_url.split(":///", 1)[1])
    sql, params = STATEMENTS[name]
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan, name
    scans = [step for step in plan if _scans_a_table(step)]
    assert not scans, f"{name}: {plan}"


def test_busy_lines_find_each_line_on_the_line_index(database_url: str) -> None:
    """The ingest flush's busy-line check costs a lookup per line, not a walk
    of every unfinished delivery of the flush's subscriptions."""
    path = Path(database_url.split(":///", 1)[1])
    sql, params = STATEMENTS["busy lines"]
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    searches = [step for step in plan if step.startswith("SEARCH d ")]
    assert searches, plan
    assert all("ix_deliveries_line" in step for step in searches), plan


def test_the_runs_walk_each_line_on_the_line_index(database_url: str) -> None:
    """A run costs a walk of its line's next deliveries, not of every unfinished
    delivery of its subscription."""
    path = Path(database_url.split(":///", 1)[1])
    sql, params = STATEMENTS["runs"]
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    lines = [step for step in plan if step.startswith(("SEARCH f ", "SEARCH g "))]
    assert len(lines) == 2, plan
    assert all("ix_deliveries_line" in step for step in lines), plan
    assert "seq>? AND seq<?" in lines[-1], f"a run's walk ends at its last delivery: {plan}"


@pytest.mark.parametrize("name", ["claim", "claim resuming"])
def test_the_claim_walks_only_the_claim_index_and_looks_its_rows_up(
    database_url: str, name: str
) -> None:
    """Both walks on ``ix_deliveries_claim``; the fresh walk goes through its
    window (the outer loop, newest first) and looks each row up by rowid, never
    every pending delivery through the (status, subscription) index. A claim
    that takes parked deliveries also reads them on their partial index, a
    resumed subscription at a time."""
    path = Path(database_url.split(":///", 1)[1])
    sql, params = STATEMENTS[name]
    with sqlite3.connect(path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    deliveries = [step for step in plan if step.startswith(("SEARCH d ", "SEARCH r "))]
    parked = ["SEARCH d USING INDEX ix_deliveries_parked (subscription_id=?)"]
    assert deliveries == [
        "SEARCH r USING INDEX ix_deliveries_claim (next_attempt_at<?)",
        "SEARCH d USING INTEGER PRIMARY KEY (rowid=?)",
        "SEARCH d USING INDEX ix_deliveries_claim (next_attempt_at<?)",
        *(parked if name == "claim resuming" else []),
    ], plan
