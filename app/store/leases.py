"""Leases: what a worker holds, renewed while it works, given back or reaped.

A claim (:mod:`app.store.claims`) leases each delivery to its worker until
``lease_expires_at``. The worker renews the leases of the attempts still
running, gives back what it will not start, and every worker returns the
deliveries of a worker that vanished (an expired lease) to ``pending``.

A delivery that goes back to pending may be the next of a line whose earlier
deliveries were sent meanwhile (a run's follower, never readied:
:mod:`app.store.claims`): whatever returns deliveries readies the heads of
their lines in the same transaction (:func:`app.store.lines.promote_heads`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from sqlalchemy import Result, TextualSelect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store import driver
from app.store.claims import SQLITE_CLAIM_HINT, timed_sql
from app.store.database import Database
from app.store.lines import SQLITE_PROMOTE_ALL, promote_heads
from app.store.schema import UTCDateTime, sqlite_timestamp

# A delivery given back, or taken back from a worker that vanished.
_TO_PENDING = (
    "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL"
)
# Each statement that returns deliveries names their lines.
_LINES = "RETURNING subscription_id, ordering_key"
# Deliveries their worker gives back untouched, their attempts and ``ready`` as
# they were: shutting down, over a subscription's limit, a failing
# subscription's waiting ones (:func:`release`), the rest of a run after a
# retry or a dead letter of its predecessor (``Completion.returned``, in the
# worker's cycle: on SQLite in its one hand-off to the writer's thread). The
# seqs as a JSON array on SQLite.
_GIVE_BACK = f"""{_TO_PENDING}
    WHERE {{seqs}} AND status = 'in_flight' AND lease_owner = :owner {_LINES}"""
SQLITE_GIVE_BACK = _GIVE_BACK.format(seqs="seq IN (SELECT value FROM json_each(:seqs))")
_PG_GIVE_BACK = text(_GIVE_BACK.format(seqs="seq = ANY(CAST(:seqs AS BIGINT[]))"))


def keyed_lines(rows: Iterable[Sequence[Any]]) -> set[tuple[str, str]]:
    """The lines (subscription, ordering key) of the returned rows that have one."""
    return {(str(r[0]), str(r[1])) for r in rows if r[1] is not None}


async def give_back(
    conn: AsyncConnection, returned: Mapping[str, Sequence[int]]
) -> set[tuple[str, str]]:
    """Give back, per owner, the deliveries it holds of those named; the lines
    they are in, whose heads the caller readies in the same transaction."""
    lines: set[tuple[str, str]] = set()
    for owner, seqs in returned.items():
        if not seqs:
            continue
        if conn.dialect.name == "postgresql":
            result = await conn.execute(_PG_GIVE_BACK, {"owner": owner, "seqs": list(seqs)})
        else:
            params = {"owner": owner, "seqs": orjson.dumps(list(seqs)).decode()}
            result = await conn.execute(text(SQLITE_GIVE_BACK), params)
        lines |= keyed_lines(result.all())
    return lines


async def _returned(conn: AsyncConnection, result: Result[Any]) -> int:
    """Ready the heads of the lines of the deliveries ``result`` returned to
    pending; how many it returned."""
    rows: list[Sequence[Any]] = list(result.all())
    await promote_heads(conn, keyed_lines(rows))
    return len(rows)


async def release(db: Database, owner: str, seqs: Sequence[int]) -> None:
    """Give claimed deliveries back untouched (shutdown, or over a subscription's
    limit), and ready the heads of their lines."""
    if not seqs:
        return
    if db.sqlite_writer is not None:
        given = {"owner": owner, "seqs": orjson.dumps(list(seqs)).decode()}
        await driver.sqlite_write(db, partial(_sqlite_returned, SQLITE_GIVE_BACK, given))
        return
    async with db.write() as conn:
        await promote_heads(conn, await give_back(conn, {owner: seqs}))


# On PostgreSQL the upkeep below runs beside the worker's cycle, on another
# connection, and touches the same rows as its outcome write: the leases of
# attempts that just finished. Taking those rows in another order than the
# outcome write does deadlocked the two (PostgreSQL breaks a deadlock only after
# ``deadlock_timeout``, 1 s by default, the worker's loop waiting all along, and
# then fails one of them: when the cycle, its outcomes are dropped and their
# deliveries sent again after the lease). So the upkeep skips a row another
# transaction holds: one whose outcome is being written needs no lease, and an
# expired one another transaction is changing is that transaction's (reaped at
# the next pass if still expired). SQLite has one writer: nothing to skip.
_RENEW_PG = timed_sql(
    """
    UPDATE deliveries SET lease_expires_at = :until
    WHERE seq = ANY(ARRAY(
        SELECT seq FROM deliveries
        WHERE seq = ANY(CAST(:seqs AS BIGINT[])) AND status = 'in_flight' AND lease_owner = :owner
        FOR UPDATE SKIP LOCKED))
""",
    ("until",),
)
_REAP_PG = timed_sql(
    f"""
    {_TO_PENDING}
    WHERE seq = ANY(ARRAY(
        SELECT seq FROM deliveries
        WHERE status = 'in_flight' AND lease_expires_at < :now
        FOR UPDATE SKIP LOCKED))
    {_LINES}
""",
    ("now",),
)
# On SQLite the worker's upkeep runs on the writer's thread, each in one
# hand-off (:func:`app.store.driver.sqlite_write`): through the writer engine
# it held the writer's turn over a round of the busy worker's event loop for
# every statement, and an ingest flush waited for all of them (up to 200 ms,
# every lease renewal).
_SQLITE_RENEW = """
    UPDATE deliveries SET lease_expires_at = :until
    WHERE seq IN (SELECT value FROM json_each(:seqs)) AND status = 'in_flight'
      AND lease_owner = :owner
"""
_SQLITE_REAP = f"{_TO_PENDING} WHERE status = 'in_flight' AND lease_expires_at < :now {_LINES}"


def _sqlite_returned(sql: str, params: Mapping[str, object], conn: sqlite3.Connection) -> int:
    """On the writer's thread: run ``sql``, which returns deliveries to pending
    and names their lines, and ready the heads of those lines; how many it returned."""
    rows = conn.execute(sql, params).fetchall()
    lines = sorted(keyed_lines(rows))
    if lines:
        driver.sqlite_run_rows(conn, SQLITE_PROMOTE_ALL, lines)
    return len(rows)


# Leases are renewed this many at a time, each batch a transaction of its own:
# the worker's outcome write waits for the rows a renewal holds (PostgreSQL), and
# ingest for SQLite's one writer. Renewing a busy worker's 2,000 or so leases in
# one go held them for 30 ms and more, and the cycle (with whatever new
# delivery it was about to claim) waited that long.
RENEW_BATCH = 256


async def renew_leases(db: Database, owner: str, seqs: Sequence[int], until: datetime) -> None:
    """Extend the leases of the deliveries ``owner`` is still working on, and only
    those: a claim whose outcome was lost must expire, so that it is sent again.
    On PostgreSQL a delivery another transaction holds (its outcome being
    written) is left as it is."""
    ordered = sorted(seqs)
    batches = [ordered[i : i + RENEW_BATCH] for i in range(0, len(ordered), RENEW_BATCH)]
    if db.sqlite_writer is not None:
        stamp = sqlite_timestamp(until)
        for batch in batches:
            params = {"owner": owner, "seqs": orjson.dumps(batch).decode(), "until": stamp}
            await driver.sqlite_write(db, partial(_sqlite_renew, params))
        return
    for batch in batches:
        async with db.write() as conn:
            await conn.execute(_RENEW_PG, {"owner": owner, "seqs": batch, "until": until})


def _sqlite_renew(params: Mapping[str, object], conn: sqlite3.Connection) -> int:
    return conn.execute(_SQLITE_RENEW, params).rowcount


async def reap_expired_leases(db: Database, now: datetime) -> int:
    """Deliveries whose worker vanished go back to pending (on PostgreSQL, not
    one another transaction holds), and the heads of their lines are readied."""
    if db.sqlite_writer is not None:
        params = {"now": sqlite_timestamp(now)}
        return await driver.sqlite_write(db, partial(_sqlite_returned, _SQLITE_REAP, params))
    async with db.write() as conn:
        return await _returned(conn, await conn.execute(_REAP_PG, {"now": now}))


async def release_all_leases(db: Database) -> int:
    """SQLite only (one worker process): whatever is in flight belonged to a dead
    worker; the heads of its lines are readied."""
    async with db.write() as conn:
        statement = text(f"{_TO_PENDING} WHERE status = 'in_flight' {_LINES}")
        return await _returned(conn, await conn.execute(statement))


def _next_due(hint: str) -> TextualSelect:
    return timed_sql(
        f"SELECT min(next_attempt_at) AS due FROM deliveries {hint} "
        "WHERE status = 'pending' AND ready AND next_attempt_at > :after",
        times=("after",),
    ).columns(due=UTCDateTime())


_NEXT_DUE_SQLITE, _NEXT_DUE_PG = _next_due(SQLITE_CLAIM_HINT), _next_due("")


async def next_due(db: Database, after: datetime) -> datetime | None:
    """When the earliest ready delivery falls due after ``after`` (the worker
    sleeps until then). What fell due by ``after`` and is still pending, the
    claim made then saw and left: it is held (paused, circuit open, at a
    limit), and a completion or a commit wakes the worker for it."""
    statement = _NEXT_DUE_SQLITE if db.is_sqlite else _NEXT_DUE_PG
    async with db.read() as conn:
        due: datetime | None = (await conn.execute(statement, {"after": after})).scalar()
    return due
