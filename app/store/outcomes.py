"""An attempt's outcome written back: the attempt row, the delivery's new
status, the line's next head freed, and what the outcomes report.

Both dialects side by side: SQLite's statements run inside the worker's one
hand-off to the writer's thread (:func:`app.store.deliveries.complete_and_claim`),
PostgreSQL's on the cycle's connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.operator_events import DeadLetter
from app.store import operator_events
from app.store.fanout import LISTENING
from app.store.leases import give_back
from app.store.lines import LOCK_SQL, busy, lock_keys, promote_sql
from app.store.schema import sqlite_timestamp
from app.store.subscriptions import CircuitUpdate, apply_circuit
from app.store.work import Completion

# SQLite writes a cycle's outcomes in two statements over the same rows (a
# VALUES list, ``{rows}``), one step each: sqlite3 gives up the GIL for every
# step and waits to get it back from the busy event loop, so a statement per
# row made the cycle mostly waiting. A retry heads its line: it is ready (a
# run's follower never was, app.store.claims). The attempts go first, numbered from each
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
        status = o.status, ready = ready OR o.status = 'pending',
        attempts = attempts + 1, round_attempts = round_attempts + 1,
        next_attempt_at = o.next_attempt_at,
        last_status_code = o.status_code, last_error = o.summary,
        completed_at = o.completed_at, dead_lettered_at = o.dead_lettered_at,
        lease_owner = NULL, lease_expires_at = NULL
    FROM o
    WHERE deliveries.seq = o.seq AND deliveries.status = 'in_flight'
      AND deliveries.lease_owner = o.owner
"""
)

# PostgreSQL writes a cycle's outcomes in one statement, from one JSON array of
# rows (``OUTCOME_FIELDS``) and the array of their seqs. The rows go as JSON
# because asyncpg checks every element of an array parameter against three
# abstract base classes in Python: thirteen arrays cost the worker about 5 µs
# an outcome, the JSON about 1, and PostgreSQL reads it back for about 1 µs
# more than the arrays. It first
# takes the advisory locks of the lines its deliveries leave (``locked``, a
# one-time condition of the UPDATE, so before any row is written: the order
# every cycle has always locked in). The UPDATE returns each delivery still
# leased to the outcome's writer with its new attempt count, and only those get
# an attempt row; the lines those deliveries left ready their next heads
# (lines.promote_sql, told which deliveries left, since the statement's
# snapshot still shows them in flight). That snapshot was taken before the
# locks, so it may miss a delivery another transaction added to such a line
# and committed while this one waited for its lock: the cycle's claim, whose
# snapshot comes after, promotes the heads of the same lines again
# (app.store.claims), which finds that delivery. The statement
# answers with the deliveries it dead-lettered when some subscription listens
# to operator events (none in most cycles), for their reports: exactly the rows
# it changed, so a worker whose lease was taken over reports nothing.
_LEFT_THEIR_LINES = f"""d.seq = ANY(ARRAY(
    SELECT f.seq FROM finished f JOIN subscriptions fs ON fs.id = f.subscription_id
    WHERE NOT ({busy("f", "fs")})))"""
# The lines whose head the statement readied: the claim need not look at them
# again (a delivery added to one of them after the statement's snapshot is
# behind that head). A delivery the worker follows with the next of its run
# (``:followed``) leaves its line to that one, in flight: nothing to ready.
_PROMOTED = "RETURNING deliveries.subscription_id, deliveries.ordering_key"
_FREED_LINES = """(
    SELECT DISTINCT f.subscription_id, f.ordering_key FROM finished f
    WHERE f.ordering_key IS NOT NULL AND f.status <> 'pending'
      AND f.seq <> ALL(CAST(:followed AS BIGINT[]))) AS line(sub, key)"""
_FINISH_AND_RECORD_PG = text(
    f"""
    WITH locked AS ({LOCK_SQL.format(keys="CAST(:line_locks AS TEXT[])")}
    ), outcome AS (
        SELECT (o->>0)::BIGINT AS seq, o->>1 AS owner, o->>2 AS status,
               (o->>3)::TIMESTAMPTZ AS next_attempt_at, (o->>4)::INTEGER AS status_code,
               o->>5 AS summary, (o->>6)::TIMESTAMPTZ AS completed_at,
               (o->>7)::TIMESTAMPTZ AS dead_lettered_at, (o->>8)::TIMESTAMPTZ AS started_at,
               (o->>9)::INTEGER AS duration_ms, o->>10 AS error, o->>11 AS response_body,
               o->>12 AS request_headers
        FROM jsonb_array_elements(CAST(:outcomes AS JSONB)) AS o
    ), finished AS (
        UPDATE deliveries d SET
            status = o.status, ready = d.ready OR o.status = 'pending',
            attempts = d.attempts + 1, round_attempts = d.round_attempts + 1,
            next_attempt_at = o.next_attempt_at,
            last_status_code = o.status_code, last_error = o.summary,
            completed_at = o.completed_at, dead_lettered_at = o.dead_lettered_at,
            lease_owner = NULL, lease_expires_at = NULL
        FROM outcome o
        WHERE (SELECT count(*) FROM locked) >= 0
          AND d.seq = ANY(CAST(:seq AS BIGINT[])) AND d.seq = o.seq
          AND d.status = 'in_flight' AND d.lease_owner = o.owner
        RETURNING d.seq, d.id, d.attempts, d.status, d.event_id, d.subscription_id, d.event_type,
                  d.last_status_code, d.last_error, d.tenant_id, d.ordering_key
    ), promoted AS ({promote_sql(_FREED_LINES, _LEFT_THEIR_LINES, _PROMOTED)}
    ), recorded AS (
        INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, error,
                              response_body, request_headers)
        SELECT f.id, f.attempts, o.started_at, o.duration_ms, o.status_code, o.error,
               o.response_body, o.request_headers
        FROM finished f JOIN outcome o ON o.seq = f.seq
        ORDER BY f.seq
    )
    SELECT f.seq, f.id, f.event_id, f.subscription_id, f.event_type, f.attempts,
           f.last_status_code, f.last_error, f.tenant_id, NULL AS promoted_key
    FROM finished f
    WHERE f.status = 'dead' AND EXISTS ({LISTENING})
    UNION ALL
    SELECT NULL, NULL, NULL, p.subscription_id, NULL, NULL, NULL, NULL, NULL, p.ordering_key
    FROM promoted p
    ORDER BY 1
    """
)


async def outcomes_postgresql(
    conn: AsyncConnection,
    completions: Sequence[Completion],
    circuit: Sequence[CircuitUpdate],
    now: datetime | None,
) -> list[tuple[str, str]]:
    """Give back the runs the outcomes return (:func:`returned_runs`), write
    the outcomes, the circuits and what they report; return the lines
    the outcomes left without readying a next head, whose heads the cycle's
    claim promotes again (see ``_FINISH_AND_RECORD_PG``). With no subscription
    listening this is what it always was: the outcome write returns no dead
    letters, and only a cycle that moves a circuit reads the listeners."""
    # Before the outcomes, so that the lines they leave see these pending (a
    # retry keeps heading its line; a dead letter's line readies the first).
    await give_back(conn, returned_runs(completions))
    left = left_lines(completions)
    dead, promoted = await _complete_postgresql(conn, completions, left)
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
    return [line for line in left if line not in promoted]


def left_lines(completions: Sequence[Completion]) -> list[tuple[str, str]]:
    """The lines whose deliveries finished (succeeded or dead), in order, but
    for those the worker goes on with the next delivery of (``followed``)."""
    return sorted(
        {
            (c.delivery.subscription_id, c.delivery.ordering_key)
            for c in completions
            if c.status != "pending" and c.delivery.ordering_key and not c.followed
        }
    )


def returned_runs(completions: Sequence[Completion]) -> dict[str, list[int]]:
    """The deliveries given back with the outcomes (``Completion.returned``), by owner."""
    returned: dict[str, list[int]] = {}
    for c in completions:
        if c.returned:
            returned.setdefault(c.owner, []).extend(c.returned)
    return returned


async def _complete_postgresql(
    conn: AsyncConnection, completions: Sequence[Completion], left: list[tuple[str, str]]
) -> tuple[list[DeadLetter], set[tuple[str, str]]]:
    """Write the outcomes; return the dead letters they made, to report (none
    when no subscription listens), and the lines whose next head they readied."""
    # The lines move on as in lines.lines_moved_on, with the lock taken before
    # the outcomes are written and no NOTIFY: this transaction's own claim
    # takes the heads it frees. The reports' lines are locked later, when they are
    # added (lines.add_deliveries): two cycles that each report on the other's
    # line wait for each other only if their subscriptions listen to each
    # other and both circuits move at once; PostgreSQL then fails one, whose
    # worker writes nothing and puts its circuits back (worker.py), and its
    # deliveries are attempted again.
    params = {
        "outcomes": orjson.dumps(
            outcome_rows(completions, _as_is), option=orjson.OPT_NAIVE_UTC
        ).decode(),
        "seq": [c.delivery.seq for c in completions],
        "line_locks": lock_keys(left),
        "followed": [c.delivery.seq for c in completions if c.followed] or [0],
    }
    rows = (await conn.execute(_FINISH_AND_RECORD_PG, params)).all()
    promoted = {(r[3], r[9]) for r in rows if r[9] is not None}
    dead = [r for r in rows if r[9] is None]
    return operator_events.reported_dead_letters(dead), promoted


def sqlite_times(params: dict[str, object]) -> dict[str, object]:
    """Parameters for a statement run on SQLite's driver: times as stored."""
    return {
        name: sqlite_timestamp(value) if isinstance(value, datetime) else value
        for name, value in params.items()
    }


def outcome_rows(
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


def _as_is(moment: datetime) -> datetime:
    return moment  # orjson writes it as RFC 3339, which PostgreSQL reads back


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
