"""The delivery worker's cycle: one transaction that writes the outcomes of
the attempts that finished (:mod:`app.store.outcomes`), frees their lines, and
claims replacements for the freed slots with their events
(:mod:`app.store.claims`). Leases are :mod:`app.store.leases`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

import orjson

from app.store import driver, operator_events
from app.store.claims import (
    SQLITE_CLAIMED,
    SQLITE_CLAIMED_LARGE_DATA,
    SQLITE_LEASE,
    claim_postgresql,
    sqlite_claim,
    stored_event,
)
from app.store.database import Database
from app.store.lines import SQLITE_PROMOTE_ALL, promote_heads
from app.store.outcomes import (
    SQLITE_FINISH_ALL,
    SQLITE_RECORD_ATTEMPTS,
    left_lines,
    outcome_rows,
    outcomes_postgresql,
    sqlite_times,
)
from app.store.schema import sqlite_timestamp
from app.store.subscriptions import CIRCUIT_SQL, CircuitUpdate, circuit_params
from app.store.work import Claimed, ClaimRequest, Completion, Work


async def complete_and_claim(
    db: Database,
    completions: Sequence[Completion],
    circuit: Sequence[CircuitUpdate] = (),
    request: ClaimRequest | None = None,
    now: datetime | None = None,
) -> list[Work]:
    """One worker cycle in one transaction: record the attempts and outcomes of
    ``completions``, free each finished line's next delivery, update the circuits
    of the subscriptions involved; then claim per ``request``, which sees the heads
    those completions promoted. Returns the claimed deliveries with their events,
    in ``seq`` order."""
    if not completions and request is None:
        return []
    if db.is_sqlite:
        return await _cycle_sqlite(db, completions, circuit, request, now)
    async with db.write() as conn:
        freed = await outcomes_postgresql(conn, completions, circuit, now) if completions else []
        if request is None or request.limit <= 0:
            # No claim to promote the freed lines' heads again (see claims._FREED).
            await promote_heads(conn, freed)
            return []
        return await claim_postgresql(conn, request, freed)


async def _cycle_sqlite(
    db: Database,
    completions: Sequence[Completion],
    circuit: Sequence[CircuitUpdate],
    request: ClaimRequest | None,
    now: datetime | None,
) -> list[Work]:
    """The cycle on SQLite as one hand-off to the writer's thread
    (:func:`app.store.driver.sqlite_write`): the parameters are built here, the
    statements run there in one transaction, the rows come back."""
    outcomes = outcome_rows(completions, sqlite_timestamp)
    lines = left_lines(completions)
    changed_at = now or (completions[-1].finished_at if completions else None)
    circuits = [
        sqlite_times(circuit_params(u, changed_at)) for u in circuit if changed_at is not None
    ]
    claim = sqlite_claim(request) if request is not None and request.limit > 0 else None
    dying, changing = operator_events.dying(completions), operator_events.changing(circuit)
    about = operator_events.reporting(completions, circuit)

    def cycle(c: sqlite3.Connection) -> tuple[str, dict[str, str]]:
        # What the outcomes will report, read before they are written, when
        # some subscription listens.
        listeners = operator_events.listeners_sqlite(c) if about else []
        dead = operator_events.dead_letters_sqlite(c, dying) if listeners else []
        before = operator_events.statuses_sqlite(c, changing) if listeners else {}
        # The attempts first: they read each delivery's count before the finish.
        driver.sqlite_run_rows(c, SQLITE_RECORD_ATTEMPTS, outcomes)
        driver.sqlite_run_rows(c, SQLITE_FINISH_ALL, outcomes)
        driver.sqlite_run_rows(c, SQLITE_PROMOTE_ALL, lines)
        for update in circuits:
            c.execute(CIRCUIT_SQL, update)
        if listeners and changed_at is not None:
            reported = operator_events.cycle_events(dead, circuit, before, changed_at)
            operator_events.store_events_sqlite(c, reported, listeners)
        if claim is None:
            return "[]", {}
        sql, params = claim
        seqs = c.execute(sql, params).fetchone()[0]
        if seqs == "[]":
            return "[]", {}
        c.execute(SQLITE_LEASE, {"owner": params["owner"], "lease": params["lease"], "seqs": seqs})
        claimed = c.execute(SQLITE_CLAIMED, {"seqs": seqs}).fetchone()[0]
        return claimed, dict(c.execute(SQLITE_CLAIMED_LARGE_DATA, {"seqs": seqs}).fetchall())

    claimed, large = await driver.sqlite_write(db, cycle)
    rows = sorted(orjson.loads(claimed), key=lambda r: int(r[0]))
    for row in rows:
        if row[11] is None:
            row[11] = large[row[7]]
    return [Work(Claimed(*r[:7]), stored_event(*r[7:])) for r in rows]
