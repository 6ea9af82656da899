"""The delivery worker's cycle: one transaction that writes the outcomes of
the attempts that finished (:mod:`app.store.outcomes`), frees their lines, and
claims replacements for the freed slots with their events
(:mod:`app.store.claims`); on PostgreSQL, two when the outcomes left their
lines (:func:`_cycle_postgresql_by_key`). Leases are :mod:`app.store.leases`.
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
    SQLITE_RUNS,
    claim_postgresql,
    sqlite_claim,
    sqlite_runs,
    stored_event,
)
from app.store.database import Database, translate_errors
from app.store.leases import SQLITE_GIVE_BACK
from app.store.lines import SQLITE_PROMOTE_ALL, promote_heads
from app.store.outcomes import (
    SQLITE_FINISH_ALL,
    SQLITE_RECORD_ATTEMPTS,
    left_lines,
    outcome_rows,
    outcomes_postgresql,
    returned_runs,
    sqlite_times,
)
from app.store.schema import sqlite_timestamp
from app.store.subscriptions import CIRCUIT_SQL, CircuitUpdate, circuit_params
from app.store.work import Claimed, ClaimRequest, Completion, Work


class ClaimFailed(Exception):
    """The cycle's outcomes (and circuits) were committed, then its claim failed
    (the cause): nothing the outcomes wrote is to be undone or written again."""


async def complete_and_claim(
    db: Database,
    completions: Sequence[Completion],
    circuit: Sequence[CircuitUpdate] = (),
    request: ClaimRequest | None = None,
    now: datetime | None = None,
) -> list[Work]:
    """One worker cycle: record the attempts and outcomes of ``completions``
    (and give back the runs they return), free each finished line's next
    delivery, update the circuits of the subscriptions involved; then claim per
    ``request``, which sees the heads those completions promoted. Returns the
    claimed deliveries with their events, in ``seq`` order. One transaction,
    except on PostgreSQL when outcomes left their lines: they commit before
    the claim (:func:`_cycle_postgresql_by_key`), and if the claim then fails,
    :class:`ClaimFailed` says so."""
    if not completions and request is None:
        return []
    if db.is_sqlite:
        return await _cycle_sqlite(db, completions, circuit, request, now)
    if request is not None and request.limit > 0 and left_lines(completions):
        return await _cycle_postgresql_by_key(db, completions, circuit, request, now)
    async with db.write() as conn:
        freed = await outcomes_postgresql(conn, completions, circuit, now) if completions else []
        if request is None or request.limit <= 0:
            # No claim to promote the freed lines' heads again (see claims._FREED).
            await promote_heads(conn, freed)
            return []
        return await claim_postgresql(conn, request, freed)


async def _cycle_postgresql_by_key(
    db: Database,
    completions: Sequence[Completion],
    circuit: Sequence[CircuitUpdate],
    request: ClaimRequest,
    now: datetime | None,
) -> list[Work]:
    """PostgreSQL, outcomes that left their lines: the outcomes and the claim
    in two transactions on one connection. The outcome write readies each
    line's next head, and the claim takes most of those heads; a row updated
    twice in one transaction has PostgreSQL check its foreign keys again (a
    lookup and a row lock of its event and of its subscription), since the
    row it updates was written by that same transaction. Committed in between,
    the claim's update changes no key and checks none: 9 % of the database's
    CPU in ``ordering: key``. The claim's snapshot is taken after the outcome
    write's commit, so it holds whatever the outcome write missed as surely
    as after its line locks (see ``claims._FREED``)."""
    with db.writing(), translate_errors():
        async with db.writer.connect() as conn:
            async with conn.begin():
                freed = await outcomes_postgresql(conn, completions, circuit, now)
            try:
                with translate_errors():
                    async with conn.begin():
                        return await claim_postgresql(conn, request, freed)
            except Exception as exc:
                raise ClaimFailed("claiming after the outcomes were written failed") from exc


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
    returned = returned_runs(completions)
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
        for owner, seqs in returned.items():
            given = {"owner": owner, "seqs": orjson.dumps(seqs).decode()}
            c.execute(SQLITE_GIVE_BACK, given).fetchall()
        driver.sqlite_run_rows(c, SQLITE_PROMOTE_ALL, lines)
        for update in circuits:
            c.execute(CIRCUIT_SQL, update)
        if listeners and changed_at is not None:
            reported = operator_events.cycle_events(dead, circuit, before, changed_at)
            operator_events.store_events_sqlite(c, reported, listeners)
        if claim is None:
            return "[]", {}
        sql, params = claim
        seqs, keyed = c.execute(sql, params).fetchone()
        if seqs == "[]":
            return "[]", {}
        runs = sqlite_runs(request, params, seqs, keyed) if request is not None else None
        if runs is not None:
            followers = c.execute(SQLITE_RUNS, runs).fetchone()[0]
            if followers != "[]":
                seqs = seqs[:-1] + "," + followers[1:]
        c.execute(SQLITE_LEASE, {"owner": params["owner"], "lease": params["lease"], "seqs": seqs})
        claimed = c.execute(SQLITE_CLAIMED, {"seqs": seqs}).fetchone()[0]
        return claimed, dict(c.execute(SQLITE_CLAIMED_LARGE_DATA, {"seqs": seqs}).fetchall())

    claimed, large = await driver.sqlite_write(db, cycle)
    rows = sorted(orjson.loads(claimed), key=lambda r: int(r[0]))
    for row in rows:
        if row[11] is None:
            row[11] = large[row[7]]
    return [Work(Claimed(*r[:7]), stored_event(*r[7:])) for r in rows]
