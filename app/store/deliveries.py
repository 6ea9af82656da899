"""The delivery worker's statements: claim, complete, release, reap.

The claim query is the heart of delivery. Both dialects are side by side
below; they differ only in PostgreSQL's ``FOR UPDATE … SKIP LOCKED`` (SQLite
has one writer, whose ``BEGIN IMMEDIATE`` transaction is lock enough).

The per-key ordering rule lives in the query: a delivery with an ordering key
is claimed only while no earlier delivery of its line is unfinished (pending,
in flight, or dead with ``on_dead_letter = 'block'``). The ``ready`` mark only
keeps the scan short; the ``NOT EXISTS`` is what guarantees the order.

The worker writes once per cycle: :func:`complete_and_claim` records the
attempts that finished, frees their lines, and claims replacements for the
freed slots (with their events) in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.operator_events import DeadLetter
from app.store import driver, operator_events
from app.store.database import Database
from app.store.events import StoredEvent
from app.store.ingest import LISTENING
from app.store.lines import SQLITE_PROMOTE_ALL, busy, lock_lines, promote_heads
from app.store.schema import UTCDateTime, sqlite_timestamp, stored_utc
from app.store.subscriptions import CIRCUIT_SQL, CircuitUpdate, apply_circuit, circuit_params
from app.store.work import Claimed, ClaimRequest, Completion, Work


def timed_sql(
    statement: str, times: tuple[str, ...] = (), expanding: tuple[str, ...] = ()
) -> TextClause:
    """Raw SQL whose time parameters go through :class:`UTCDateTime` like the ORM's."""
    params = [bindparam(name, type_=UTCDateTime()) for name in times]
    params += [bindparam(name, expanding=True) for name in expanding]
    return text(statement).bindparams(*params)


# A delivery the claim may take: due, the head of its line (or of no line), its
# subscription active with its circuit not open, and no earlier delivery of its
# line unfinished.
_CLAIMABLE = """
    d.status = 'pending' AND d.ready
      AND d.next_attempt_at <= :now
      AND s.status = 'active'
      AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= :now)
      AND (d.ordering_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries p
            WHERE p.subscription_id = d.subscription_id
              AND p.ordering_key = d.ordering_key
              AND p.seq < d.seq
              AND {busy_line}))
"""
# A claim walks the claim index twice. The *fresh* walk looks only at the
# newest FRESH_WINDOW due deliveries, newest first, and leaves out the
# subscriptions of the tenant that holds most of the worker (``crowding``):
# another tenant's new delivery is found at once, however long the backlog the
# worker is serving. The *oldest* walk fills the rest of the limit oldest
# first, as the deliveries fell due, for every subscription with room. The window
# bounds the fresh walk's cost when it finds nothing. The oldest walk's cost is
# what it passes of the subscriptions left out (``exclude``), which is why the
# worker leaves it out while the crowding tenant is at its limit.
FRESH_WINDOW = 512
_FRESH = """
    SELECT d.seq
    FROM deliveries d {fresh_hint}
    JOIN subscriptions s ON s.id = d.subscription_id
    WHERE {in_window} AND {claimable} AND {not_crowding} AND {not_excluded}
    ORDER BY d.next_attempt_at DESC, d.seq DESC
    LIMIT :fresh
"""
_WINDOW = f"""
    SELECT r.seq FROM deliveries r {{index_hint}}
    WHERE r.status = 'pending' AND r.ready AND r.next_attempt_at <= :now
    ORDER BY r.next_attempt_at DESC, r.seq DESC
    LIMIT {FRESH_WINDOW}
"""
_OLDEST = """
    SELECT d.seq
    FROM deliveries d {index_hint}
    JOIN subscriptions s ON s.id = d.subscription_id
    WHERE {claimable} AND {not_excluded} AND {not_fresh}
    ORDER BY d.next_attempt_at, d.seq
    LIMIT :oldest
"""

# What the claim takes: the fresh walk's, then the oldest walk's up to the
# limit. The oldest walk's own LIMIT is a plain parameter (the whole limit, or
# 0 to leave it out): an expression there hides its size from PostgreSQL's
# planner, which then sorted the whole backlog (30 ms a claim at 30,000).
_TAKEN = """
    SELECT seq FROM fresh
    UNION ALL
    SELECT * FROM (SELECT seq FROM oldest LIMIT :limit - (SELECT count(*) FROM fresh)) AS rest
"""

# SQLite's planner prefers the (status, subscription_id) index and then sorts
# the whole backlog; the claim index serves the ORDER BY ... LIMIT directly.
SQLITE_CLAIM_HINT = "INDEXED BY ix_deliveries_claim"


# PostgreSQL runs the claim as a prepared statement and soon with a generic
# plan, which must not sort the backlog either. Two spellings keep it on the
# claim index: the excluded subscriptions as one array on the subscriptions
# side (``d.subscription_id NOT IN ($n)`` with one subscription in the
# statistics estimated one row, and a sort looked cheap), and the claimed rows
# joined back by ``seq = ANY(ARRAY(…))`` (a LIMIT of unknown size estimated
# hundreds of rows and hashed the whole table).
def _pg_walks() -> tuple[str, str]:
    claimable = _CLAIMABLE.format(busy_line=busy("p", "s"))
    fresh = _FRESH.format(
        fresh_hint="",
        in_window=f"d.seq = ANY(ARRAY({_WINDOW.format(index_hint='')}))",
        claimable=claimable,
        not_crowding="s.id <> ALL(CAST(:crowding AS TEXT[]))",
        not_excluded="s.id <> ALL(CAST(:exclude AS TEXT[]))",
    )
    oldest = _OLDEST.format(
        index_hint="",
        claimable=claimable,
        not_excluded="s.id <> ALL(CAST(:exclude AS TEXT[]))",
        not_fresh="d.seq <> ALL(ARRAY(SELECT seq FROM fresh))",
    )
    return fresh, oldest


def _sqlite_walks() -> tuple[str, str]:
    claimable = _CLAIMABLE.format(busy_line=busy("p", "s"))
    fresh = _FRESH.format(
        # The window's rows by rowid; without statistics SQLite would rather
        # walk every pending delivery of the (status, subscription) index.
        fresh_hint="NOT INDEXED",
        in_window=f"d.seq IN ({_WINDOW.format(index_hint=SQLITE_CLAIM_HINT)})",
        claimable=claimable,
        not_crowding="s.id NOT IN (SELECT value FROM json_each(:crowding))",
        not_excluded="s.id NOT IN (SELECT value FROM json_each(:exclude))",
    )
    oldest = _OLDEST.format(
        index_hint=SQLITE_CLAIM_HINT,
        claimable=claimable,
        not_excluded="s.id NOT IN (SELECT value FROM json_each(:exclude))",
        not_fresh="d.seq NOT IN (SELECT seq FROM fresh)",
    )
    return fresh, oldest


_CLAIMED_COLUMNS = (
    "deliveries.seq, deliveries.id, deliveries.event_id, deliveries.subscription_id, "
    "deliveries.ordering_key, deliveries.attempts, deliveries.round_attempts"
)
_EVENT_COLUMNS = (
    "e.seq AS event_seq, e.type AS event_type, e.key AS event_key, e.data AS event_data, "
    "e.schema_version AS event_schema_version, e.occurred_at AS event_occurred_at, "
    "e.received_at AS event_received_at, e.traceparent AS event_traceparent, "
    "e.tracestate AS event_tracestate"
)


# Each claimed delivery comes back with its event. PostgreSQL's UPDATE … FROM
# joins it. SQLite's RETURNING cannot join, and sqlite3 gives up the GIL for
# every row it steps through (and waits to get it back from the busy event
# loop), so SQLite claims in three statements of one row each: the candidates'
# seqs as a JSON array, the lease on those seqs, and the claimed deliveries with
# their events as one JSON array (an event's data is its stored text). Data
# longer than SQLITE_INLINE_DATA characters is read by a fourth statement, row
# by row, so that no claim comes near SQLite's limit on one string's size.
def _claim() -> dict[str, str]:
    pg_fresh, pg_oldest = _pg_walks()
    sqlite_fresh, sqlite_oldest = _sqlite_walks()
    return {
        "postgresql": f"""
        WITH fresh AS MATERIALIZED ({pg_fresh} FOR UPDATE OF d SKIP LOCKED),
        oldest AS MATERIALIZED ({pg_oldest} FOR UPDATE OF d SKIP LOCKED)
        UPDATE deliveries SET status = 'in_flight', lease_owner = :owner, lease_expires_at = :lease
        FROM events e
        WHERE deliveries.seq = ANY(ARRAY({_TAKEN}))
          AND e.id = deliveries.event_id
        RETURNING {_CLAIMED_COLUMNS}, {_EVENT_COLUMNS}
    """,
        "sqlite": f"""
        WITH fresh AS MATERIALIZED ({sqlite_fresh}), oldest AS MATERIALIZED ({sqlite_oldest})
        SELECT json_group_array(seq) FROM ({_TAKEN})
    """,
    }


CLAIM = _claim()
SQLITE_LEASE = """
    UPDATE deliveries SET status = 'in_flight', lease_owner = :owner, lease_expires_at = :lease
    WHERE seq IN (SELECT value FROM json_each(:seqs))
"""
SQLITE_INLINE_DATA = 65536
SQLITE_CLAIMED = f"""
    SELECT json_group_array(json_array(
        d.seq, d.id, d.event_id, d.subscription_id, d.ordering_key, d.attempts, d.round_attempts,
        e.id, e.seq, e.type, e.key,
        CASE WHEN length(e.data) <= {SQLITE_INLINE_DATA} THEN e.data END,
        e.schema_version, e.occurred_at, e.received_at, e.traceparent, e.tracestate))
    FROM deliveries d JOIN events e ON e.id = d.event_id
    WHERE d.seq IN (SELECT value FROM json_each(:seqs))
"""
SQLITE_CLAIMED_LARGE_DATA = f"""
    SELECT DISTINCT e.id, e.data
    FROM deliveries d JOIN events e ON e.id = d.event_id
    WHERE d.seq IN (SELECT value FROM json_each(:seqs)) AND length(e.data) > {SQLITE_INLINE_DATA}
"""

_EVENT_TIMES = ("occurred_at", "received_at")


_PG_CLAIM = timed_sql(CLAIM["postgresql"], ("now", "lease"))


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
        if completions:
            await _outcomes_postgresql(conn, completions, circuit, now)
        if request is None or request.limit <= 0:
            return []
        return await _claim_postgresql(conn, request)


async def _claim_postgresql(conn: AsyncConnection, request: ClaimRequest) -> list[Work]:
    result = await conn.execute(
        _PG_CLAIM,
        {
            "owner": request.owner,
            "now": request.now,
            "lease": request.lease_until,
            "limit": request.limit,
            "fresh": min(request.fresh, request.limit),
            "oldest": request.limit if request.oldest else 0,
            "exclude": list(request.exclude) or ["-"],
            "crowding": list(request.crowding) or ["-"],
        },
    )
    rows = sorted(result, key=lambda r: int(r[0]))
    return [Work(Claimed(*r[:7]), _event(r[2], *r[7:])) for r in rows]


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
    outcomes = _outcome_rows(completions, sqlite_timestamp)
    lines = sorted(
        {
            (c.delivery.subscription_id, c.delivery.ordering_key)
            for c in completions
            if c.status != "pending" and c.delivery.ordering_key
        }
    )
    changed_at = now or (completions[-1].finished_at if completions else None)
    circuits = [
        _sqlite_times(circuit_params(u, changed_at)) for u in circuit if changed_at is not None
    ]
    claim = _sqlite_claim(request) if request is not None and request.limit > 0 else None
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
    return [Work(Claimed(*r[:7]), _event(*r[7:])) for r in rows]


def _sqlite_claim(request: ClaimRequest) -> tuple[str, dict[str, object]]:
    """The claim statement with its parameters: times in their stored form, the
    excluded and crowding subscriptions as JSON arrays."""
    params: dict[str, object] = {
        "owner": request.owner,
        "now": sqlite_timestamp(request.now),
        "lease": sqlite_timestamp(request.lease_until),
        "limit": request.limit,
        "fresh": min(request.fresh, request.limit),
        "oldest": request.limit if request.oldest else 0,
        "exclude": orjson.dumps(list(request.exclude)).decode(),
        "crowding": orjson.dumps(list(request.crowding)).decode(),
    }
    return CLAIM["sqlite"], params


def _event(
    event_id: str,
    seq: int,
    event_type: str,
    key: str | None,
    data: str,
    schema_version: int | None,
    occurred_at: object,
    received_at: object,
    traceparent: str | None,
    tracestate: str | None,
) -> StoredEvent:
    received = stored_utc(received_at)
    assert received is not None
    return StoredEvent(
        seq,
        event_id,
        event_type,
        key,
        data,
        schema_version,
        stored_utc(occurred_at),
        received,
        traceparent,
        tracestate,
    )


# SQLite writes a cycle's outcomes in two statements over the same rows (a
# VALUES list, ``{rows}``), one step each: sqlite3 gives up the GIL for every
# step and waits to get it back from the busy event loop, so a statement per
# row made the cycle mostly waiting. The attempts go first, numbered from each
# delivery's count, and only for deliveries still leased to the outcome's
# writer (a worker whose lease ran out and was taken over records nothing).
_SQLITE_OUTCOME = """
    WITH o(seq, owner, status, next_attempt_at, status_code, summary, completed_at,
           dead_lettered_at, started_at, duration_ms, error, response_body,
           request_headers) AS (VALUES {rows})
"""
SQLITE_RECORD_ATTEMPTS = (
    _SQLITE_OUTCOME
    + """
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, error,
                          response_body, request_headers)
    SELECT d.id, d.attempts + 1, o.started_at, o.duration_ms, o.status_code, o.error,
           o.response_body, o.request_headers
    FROM o JOIN deliveries d ON d.seq = o.seq
    WHERE d.status = 'in_flight' AND d.lease_owner = o.owner
    ORDER BY o.seq
"""
)
SQLITE_FINISH_ALL = (
    _SQLITE_OUTCOME
    + """
    UPDATE deliveries SET
        status = o.status, attempts = attempts + 1, round_attempts = round_attempts + 1,
        next_attempt_at = o.next_attempt_at,
        last_status_code = o.status_code, last_error = o.summary,
        completed_at = o.completed_at, dead_lettered_at = o.dead_lettered_at,
        lease_owner = NULL, lease_expires_at = NULL
    FROM o
    WHERE deliveries.seq = o.seq AND deliveries.status = 'in_flight'
      AND deliveries.lease_owner = o.owner
"""
)


# PostgreSQL writes a cycle's outcomes in one statement, from arrays: the UPDATE
# returns each delivery still leased to the outcome's writer with its new
# attempt count, and only those get an attempt row. The statement answers with
# the deliveries it dead-lettered when some subscription listens to operator
# events (none in most cycles), for their reports: exactly the rows it changed,
# so a worker whose lease was taken over reports nothing.
_FINISH_AND_RECORD_PG = text(
    f"""
    WITH outcome AS (
        SELECT * FROM unnest(
            CAST(:seq AS BIGINT[]), CAST(:owner AS TEXT[]), CAST(:status AS TEXT[]),
            CAST(:next_attempt_at AS TIMESTAMPTZ[]), CAST(:status_code AS INTEGER[]),
            CAST(:summary AS TEXT[]), CAST(:completed_at AS TIMESTAMPTZ[]),
            CAST(:dead_lettered_at AS TIMESTAMPTZ[]), CAST(:started_at AS TIMESTAMPTZ[]),
            CAST(:duration_ms AS INTEGER[]), CAST(:error AS TEXT[]), CAST(:response_body AS TEXT[]),
            CAST(:request_headers AS TEXT[])
        ) AS o(seq, owner, status, next_attempt_at, status_code, summary, completed_at,
               dead_lettered_at, started_at, duration_ms, error, response_body, request_headers)
    ), finished AS (
        UPDATE deliveries d SET
            status = o.status, attempts = d.attempts + 1, round_attempts = d.round_attempts + 1,
            next_attempt_at = o.next_attempt_at,
            last_status_code = o.status_code, last_error = o.summary,
            completed_at = o.completed_at, dead_lettered_at = o.dead_lettered_at,
            lease_owner = NULL, lease_expires_at = NULL
        FROM outcome o
        WHERE d.seq = ANY(CAST(:seq AS BIGINT[])) AND d.seq = o.seq
          AND d.status = 'in_flight' AND d.lease_owner = o.owner
        RETURNING d.seq, d.id, d.attempts, d.status, d.event_id, d.subscription_id, d.event_type,
                  d.last_status_code, d.last_error, d.tenant_id
    ), recorded AS (
        INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, error,
                              response_body, request_headers)
        SELECT f.id, f.attempts, o.started_at, o.duration_ms, o.status_code, o.error,
               o.response_body, o.request_headers
        FROM finished f JOIN outcome o ON o.seq = f.seq
        ORDER BY f.seq
    )
    SELECT f.seq, f.id, f.event_id, f.subscription_id, f.event_type, f.attempts,
           f.last_status_code, f.last_error, f.tenant_id
    FROM finished f
    WHERE f.status = 'dead' AND EXISTS ({LISTENING})
    ORDER BY f.seq
    """
)


async def _outcomes_postgresql(
    conn: AsyncConnection,
    completions: Sequence[Completion],
    circuit: Sequence[CircuitUpdate],
    now: datetime | None,
) -> None:
    """Write the outcomes, the circuits and what they report. With no
    subscription listening this is what it always was: the outcome write
    returns no dead letters, and only a cycle that moves a circuit reads the
    listeners."""
    dead = await _complete_postgresql(conn, completions)
    moved = operator_events.changing(circuit)
    listeners = await operator_events.listeners(conn) if dead or moved else []
    before: operator_events.Statuses = {}
    if listeners and moved:
        before = await operator_events.statuses(conn, moved)
    if circuit:
        await apply_circuit(conn, circuit, now or completions[-1].finished_at)
    if listeners:
        changed_at = now or completions[-1].finished_at
        reported = operator_events.cycle_events(dead, circuit, before, changed_at)
        await operator_events.store_events(conn, reported, listeners)


async def _complete_postgresql(
    conn: AsyncConnection, completions: Sequence[Completion]
) -> list[DeadLetter]:
    """Write the outcomes; return the dead letters they made, to report (none
    when no subscription listens)."""
    finished_lines = [
        (c.delivery.subscription_id, c.delivery.ordering_key)
        for c in completions
        if c.status != "pending"
    ]
    # The lines move on as in lines.lines_moved_on, with the lock taken before
    # the outcomes (the order every cycle has always locked in) and no NOTIFY:
    # this transaction's own claim takes the heads it frees. The reports' lines
    # are locked later, when they are added (lines.add_deliveries): two cycles
    # that each report on the other's line wait for each other only if their
    # subscriptions listen to each other and both circuits move at once;
    # PostgreSQL then fails one, whose worker writes nothing and puts its
    # circuits back (worker.py), and its deliveries are attempted again.
    await lock_lines(conn, finished_lines)
    dead = await conn.execute(_FINISH_AND_RECORD_PG, _outcome_arrays(completions))
    await promote_heads(conn, finished_lines)
    return operator_events.reported_dead_letters(dead)


def _sqlite_times(params: dict[str, object]) -> dict[str, object]:
    """Parameters for a statement run on SQLite's driver: times as stored."""
    return {
        name: sqlite_timestamp(value) if isinstance(value, datetime) else value
        for name, value in params.items()
    }


def _outcome_rows(
    completions: Sequence[Completion], stamp: Callable[[datetime], object]
) -> list[tuple[object, ...]]:
    """One row per outcome, columns in ``OUTCOME_FIELDS`` order (the order of
    ``_SQLITE_OUTCOME`` and of ``_FINISH_AND_RECORD_PG``'s arrays); ``stamp``
    gives each time the form the statement takes."""
    rows: list[tuple[object, ...]] = []
    for c in completions:
        status, done, retry_at = c.status, stamp(c.finished_at), c.next_attempt_at
        if status == "pending":
            next_at = stamp(retry_at) if retry_at is not None else None
        else:
            next_at = done
        rows.append(
            (
                c.delivery.seq,
                c.owner,
                status,
                next_at,
                c.status_code,
                c.summary,
                done if status == "succeeded" else None,
                done if status == "dead" else None,
                stamp(c.started_at),
                c.duration_ms,
                c.error,
                c.response_body,
                c.request_headers,
            )
        )
    return rows


def _outcome_arrays(completions: Sequence[Completion]) -> dict[str, list[object]]:
    rows = _outcome_rows(completions, lambda moment: moment)
    return dict(zip(OUTCOME_FIELDS, driver.columns(rows, len(OUTCOME_FIELDS)), strict=True))


OUTCOME_FIELDS = (
    "seq",
    "owner",
    "status",
    "next_attempt_at",
    "status_code",
    "summary",
    "completed_at",
    "dead_lettered_at",
    "started_at",
    "duration_ms",
    "error",
    "response_body",
    "request_headers",
)
