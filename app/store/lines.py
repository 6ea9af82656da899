"""Delivery lines: the deliveries of one subscription for one ordering key.

Every rule about lines lives here, once, with the two dialects side by side
where they differ:

* a delivery keeps its line *busy* while it is pending or in flight, or dead
  when its subscription blocks on dead letters (:func:`busy`, the one spelling
  every statement uses);
* only the head of a line (its lowest ``seq`` unfinished delivery) is ``ready``
  to be claimed; the claim that takes it may take the line's next deliveries
  with it, a *run* (:mod:`app.store.claims`), which are never readied: the
  worker sends them one after another, and whatever hands them back to
  pending (a predecessor's retry or dead letter, a release, an expired lease)
  readies the line's head again in the same transaction;
* new deliveries join their lines with :func:`add_deliveries` (lock, mark the
  heads, insert, wake the workers); when deliveries leave their lines
  (redriven, discarded) or a line's rule changes, :func:`lines_moved_on` frees
  each line's next head (lock, promote, wake).

On PostgreSQL every transaction that adds to or finishes a delivery in a line
first takes the line's advisory lock (:func:`lock_lines`), so a head finishing
and a new delivery arriving can never miss each other; SQLite has one writer,
and the same calls take no lock there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import ARRAY, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.ids import new_id
from app.store import driver
from app.store.notify import CHANNEL
from app.store.schema import deliveries

Line = tuple[str, str]


def busy(d: str = "d", s: str = "s") -> str:
    """SQL: delivery ``d`` (of subscription ``s``) keeps its line busy. The
    first two terms spell the partial index predicate of ``ix_deliveries_line``
    (``schema.LINED``) literally, so both planners use that index."""
    return (
        f"{d}.status IN ('pending', 'in_flight', 'dead') AND {d}.ordering_key IS NOT NULL "
        f"AND ({d}.status <> 'dead' OR {s}.on_dead_letter = 'block')"
    )


def line_is_busy(sub: str, key: str, hint: str = "") -> str:
    """SQL: the line of subscription ``sub`` and ordering key ``key`` is busy.
    EXISTS stops at the line's first unfinished delivery on the line index,
    however long the line has grown (a DISTINCT over every unfinished delivery
    of the lines cost a flush more and more as a backlog built up)."""
    return f"""EXISTS (
    SELECT 1 FROM deliveries d {hint} JOIN subscriptions s ON s.id = d.subscription_id
    WHERE d.subscription_id = {sub} AND d.ordering_key = {key} AND {busy()})"""


# SQLite: the lines as a VALUES list (``{rows}``, driver.row_statements); without
# statistics SQLite would rather search the (status, subscription_id) index.
SQLITE_BUSY = "WITH line(sub, key) AS (VALUES {rows}) SELECT sub, key FROM line WHERE " + (
    line_is_busy("line.sub", "line.key", hint="INDEXED BY ix_deliveries_line")
)
# PostgreSQL: the lines as two arrays, paired.
_PG_BUSY = text(
    "SELECT line.sub, line.key "
    "FROM unnest(CAST(:subs AS TEXT[]), CAST(:keys AS TEXT[])) AS line(sub, key) WHERE "
    + line_is_busy("line.sub", "line.key")
)

# SQLite: the lines as a VALUES list (``{{rows}}``, driver.row_statements), so
# that a whole promotion is one statement. Each head is the first unfinished
# delivery in ``seq`` order, found on the line index.
SQLITE_PROMOTE_ALL = f"""
    WITH line(sub, key) AS (VALUES {{rows}})
    UPDATE deliveries SET ready = TRUE
    FROM (
        SELECT (
            SELECT min(d.seq)
            FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
            WHERE {busy()}
              AND d.subscription_id = line.sub AND d.ordering_key = line.key
        ) AS seq
        FROM line
    ) AS head
    WHERE deliveries.seq = head.seq AND deliveries.status = 'pending' AND NOT deliveries.ready
"""


def promote_sql(lines: str, left: str = "FALSE", returning: str = "") -> str:
    """PostgreSQL: ready the head of each line, if it is a pending delivery.
    ``lines`` is a FROM item naming the lines ``line(sub, key)``; each head is
    the first busy delivery in ``seq`` order (the line index walked for one
    row), joined back by primary key. ``left`` is SQL true of a delivery ``d``
    that left its line earlier in the same statement, whose snapshot still
    shows it busy (the worker's outcome write, app.store.outcomes), and
    ``returning`` an optional RETURNING clause."""
    return f"""
    UPDATE deliveries SET ready = TRUE
    FROM {lines}
    JOIN subscriptions s ON s.id = line.sub
    CROSS JOIN LATERAL (
        SELECT d.seq FROM deliveries d
        WHERE {busy()}
          AND d.subscription_id = line.sub AND d.ordering_key = line.key
          AND NOT ({left})
        ORDER BY d.seq
        LIMIT 1
    ) AS head
    WHERE deliveries.seq = head.seq AND deliveries.status = 'pending' AND NOT deliveries.ready
    {returning}"""


# Every line in one statement, the lines as two parallel arrays.
_PROMOTE_ALL = text(
    promote_sql("unnest(CAST(:subs AS TEXT[]), CAST(:keys AS TEXT[])) AS line(sub, key)")
)

# The advisory lock of each line, taken in this order by every transaction: a
# statement of its own (_LOCK), or the first step of the worker's outcome write
# (LOCK_SQL, app.store.outcomes).
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest({keys}) AS k"


_LOCK = text(LOCK_SQL.format(keys=":keys")).bindparams(bindparam("keys", type_=ARRAY(String)))

DELIVERY_COLUMNS = (
    "id, event_id, subscription_id, event_type, ordering_key, status, ready, attempts, "
    "round_attempts, next_attempt_at, created_at, tenant_id"
)
DELIVERY_FIELDS = tuple(DELIVERY_COLUMNS.split(", "))
# Rows are inserted, and so numbered (seq), in array order.
_PG_INSERT_DELIVERIES = (
    f"INSERT INTO deliveries ({DELIVERY_COLUMNS}) SELECT {DELIVERY_COLUMNS} "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
    "$7::boolean[], $8::int[], $9::int[], $10::timestamptz[], $11::timestamptz[], $12::text[]) "
    f"WITH ORDINALITY AS t({DELIVERY_COLUMNS}, n) ORDER BY n"
)


def lock_keys(lines: Iterable[tuple[object, object]]) -> list[str]:
    """The advisory lock keys of ``lines``, in the order they are taken."""
    return sorted({f"{sub}\x1f{key}" for sub, key in lines if key is not None})


async def lock_lines(conn: AsyncConnection, lines: Iterable[tuple[object, object]]) -> None:
    """Take the advisory locks of ``lines`` in a fixed order (PostgreSQL; SQLite's
    one writer needs none)."""
    if conn.dialect.name != "postgresql":
        return
    keys = lock_keys(lines)
    if keys:
        await conn.execute(_LOCK, {"keys": keys})


async def notify_workers(conn: AsyncConnection) -> None:
    """Wake every worker at commit (PostgreSQL's NOTIFY; SQLite's embedded worker
    is woken in-process by whoever made the deliveries due)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"NOTIFY {CHANNEL}"))


async def add_deliveries(conn: AsyncConnection, rows: list[dict[str, object]]) -> None:
    """New delivery rows (:func:`delivery_row`) join their lines, in the caller's
    transaction: lock the lines, mark each row that heads its line ready, insert
    them in order (so ``seq`` follows ``rows``), wake the workers."""
    if not rows:
        return
    await lock_lines(conn, lines_of(rows))
    await mark_heads(conn, rows)
    if conn.dialect.name == "postgresql":
        values = [tuple(row[f] for f in DELIVERY_FIELDS) for row in rows]
        await driver.fetch_all(
            conn, _PG_INSERT_DELIVERIES, driver.columns(values, len(DELIVERY_FIELDS))
        )
    else:
        await conn.execute(deliveries.insert(), rows)
    await notify_workers(conn)


async def lines_moved_on(conn: AsyncConnection, lines: list[tuple[str, str | None]]) -> int:
    """Deliveries left ``lines`` (redriven, discarded) or the lines' rule changed:
    in the caller's transaction, lock them, ready each one's next head, wake the
    workers. Returns how many lines were named."""
    await lock_lines(conn, lines)
    await promote_heads(conn, lines)
    if lines:
        await notify_workers(conn)
    return len(lines)


async def busy_lines(conn: AsyncConnection, lines: Iterable[tuple[object, object]]) -> set[Line]:
    """Which of ``lines`` hold an unfinished delivery (one query for all of them)."""
    wanted = sorted({(str(sub), str(key)) for sub, key in lines})
    if not wanted:
        return set()
    if conn.dialect.name == "postgresql":
        params = {"subs": [sub for sub, _ in wanted], "keys": [key for _, key in wanted]}
        return {(r[0], r[1]) for r in await conn.execute(_PG_BUSY, params)}
    found: set[Line] = set()
    for sql, row_params in driver.row_statements(SQLITE_BUSY, wanted):
        found |= {(r[0], r[1]) for r in await driver.fetch_all(conn, sql, row_params)}
    return found


def busy_lines_sqlite(
    conn: sqlite3.Connection, lines: Iterable[tuple[object, object]]
) -> set[Line]:
    """:func:`busy_lines` on a plain sqlite3 connection (a transaction run on the
    writer's thread, :func:`app.store.driver.sqlite_write`)."""
    wanted = sorted({(str(sub), str(key)) for sub, key in lines})
    found: set[Line] = set()
    for sql, params in driver.row_statements(SQLITE_BUSY, wanted):
        found |= {(r[0], r[1]) for r in conn.execute(sql, params)}
    return found


async def promote_heads(conn: AsyncConnection, lines: Iterable[tuple[str, str | None]]) -> None:
    """Mark the head of each line ready, if it is a pending delivery."""
    wanted = sorted({(sub, key) for sub, key in lines if key})
    if not wanted:
        return
    if conn.dialect.name == "postgresql":
        subs, keys = [sub for sub, _ in wanted], [key for _, key in wanted]
        await conn.execute(_PROMOTE_ALL, {"subs": subs, "keys": keys})
    else:
        for sql, params in driver.row_statements(SQLITE_PROMOTE_ALL, wanted):
            await driver.fetch_all(conn, sql, params)


def delivery_row(
    tenant_id: str,
    event_id: str,
    event_type: str,
    key: str | None,
    subscription_id: str,
    by_key: bool,
    at: datetime,
) -> dict[str, object]:
    """A new pending delivery; ``ready`` is settled by :func:`mark_heads`."""
    return {
        "id": new_id("dlv"),
        "event_id": event_id,
        "subscription_id": subscription_id,
        "event_type": event_type,
        "ordering_key": key if by_key else None,
        "status": "pending",
        "ready": True,
        "attempts": 0,
        "round_attempts": 0,
        "next_attempt_at": at,
        "created_at": at,
        "tenant_id": tenant_id,
    }


async def mark_heads(conn: AsyncConnection, rows: list[dict[str, object]]) -> None:
    """Set ``ready`` on each new delivery (in ``seq`` order) that heads its line."""
    lines = lines_of(rows)
    settle_heads(rows, set(await busy_lines(conn, lines)) if lines else set())


def lines_of(rows: list[dict[str, object]]) -> set[tuple[object, object]]:
    """The lines new delivery rows join (rows without an ordering key join none)."""
    return {(r["subscription_id"], r["ordering_key"]) for r in rows if r["ordering_key"]}


def settle_heads(rows: list[dict[str, object]], busy: set[tuple[object, object]]) -> None:
    """Set ``ready`` on each new delivery (in ``seq`` order) whose line is not ``busy``
    already, or taken by an earlier row; ``busy`` is updated with the lines taken."""
    for row in rows:
        line = (row["subscription_id"], row["ordering_key"])
        if row["ordering_key"] is None:
            row["ready"] = True
        elif line in busy:
            row["ready"] = False
        else:
            row["ready"] = True
            busy.add(line)
