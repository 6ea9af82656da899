"""The ingest transaction: events, their delivery rows and their idempotency
keys, for many requests at once (group commit), all or nothing per request.

Idempotency keys are resolved in two phases inside one write transaction:
first read what is already remembered and decide every item (new, replay,
mismatch); then write. A key another process commits between the two phases
(PostgreSQL only; SQLite has one writer) shows up as a missing ``RETURNING``
row, and the whole transaction is retried, when the first phase will see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.events import NewEvent, accepted_body
from app.domain.filters import any_matches
from app.errors import FieldError, ValidationFailed
from app.store import driver, schema
from app.store.database import Database
from app.store.lines import delivery_row, lock_lines, mark_heads
from app.store.notify import CHANNEL

MAX_RETRIES = 5


@dataclass(frozen=True, slots=True)
class Accepted:
    """One event of a request: its ID, the stored 202 body, and whether it was a replay."""

    event_id: str
    body: str
    replayed: bool


UnitResult = list[Accepted] | ValidationFailed


class KeyRace(Exception):
    """Another transaction committed one of our idempotency keys; retry."""


@dataclass(slots=True)
class _Plan:
    new: list[NewEvent] = field(default_factory=list)
    # Per item: an Accepted (replay of a stored key), a NewEvent, or the
    # NewEvent of an earlier item in this transaction that it replays.
    items: list[Accepted | NewEvent | tuple[NewEvent]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Stored:
    fingerprint: str
    event_id: str
    body: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Subscription:
    id: str
    patterns: tuple[str, ...]
    by_key: bool


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    results: list[UnitResult]
    deliveries: int  # delivery rows created, so the caller knows to wake a worker


async def ingest(
    db: Database, units: Sequence[Sequence[NewEvent]], *, ttl: timedelta, now: datetime
) -> IngestOutcome:
    """Store every unit that can be stored, in one transaction."""
    for attempt in range(MAX_RETRIES):
        try:
            async with db.write() as conn:
                return await _ingest(conn, db.dialect, units, now - ttl)
        except KeyRace:
            if attempt == MAX_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


async def _ingest(
    conn: AsyncConnection, dialect: str, units: Sequence[Sequence[NewEvent]], cutoff: datetime
) -> IngestOutcome:
    keys = {e.idempotency_key for unit in units for e in unit if e.idempotency_key}
    stored = await _load_keys(conn, dialect, keys) if keys else {}
    live = {k: row for k, row in stored.items() if row.created_at >= cutoff}
    reclaim = [k for k, row in stored.items() if row.created_at < cutoff]

    claimed: dict[str, NewEvent] = {}
    plans: list[_Plan | ValidationFailed] = []
    for unit in units:
        plan = _plan_unit(unit, live, claimed)
        plans.append(plan)
        if isinstance(plan, _Plan):
            claimed.update({e.idempotency_key: e for e in plan.new if e.idempotency_key})

    new_events = [e for p in plans if isinstance(p, _Plan) for e in p.new]
    bodies, deliveries = await _write(conn, dialect, new_events, reclaim, cutoff)
    results = [_answer(p, bodies) if isinstance(p, _Plan) else p for p in plans]
    return IngestOutcome(results, deliveries)


def _plan_unit(
    unit: Sequence[NewEvent], live: dict[str, _Stored], claimed: dict[str, NewEvent]
) -> _Plan | ValidationFailed:
    plan = _Plan()
    local: dict[str, NewEvent] = {}
    errors: list[FieldError] = []
    for index, event in enumerate(unit):
        key = event.idempotency_key
        if key is None:
            plan.new.append(event)
            plan.items.append(event)
            continue
        prior = live.get(key)
        earlier = claimed.get(key) or local.get(key)
        if prior is not None:
            if prior.fingerprint != event.fingerprint:
                errors.append(_mismatch(index, len(unit)))
            else:
                plan.items.append(Accepted(prior.event_id, prior.body, replayed=True))
        elif earlier is not None:
            if earlier.fingerprint != event.fingerprint:
                errors.append(_mismatch(index, len(unit)))
            else:
                plan.items.append((earlier,))
        else:
            local[key] = event
            plan.new.append(event)
            plan.items.append(event)
    if errors:
        return ValidationFailed(
            "the Idempotency-Key was already used with a different body", errors
        )
    return plan


def _mismatch(index: int, size: int) -> FieldError:
    loc = f"/events/{index}/idempotency_key" if size > 1 else "/"
    return FieldError(loc, "this idempotency key was already used with a different body")


def _answer(plan: _Plan, bodies: dict[str, str]) -> list[Accepted]:
    answers: list[Accepted] = []
    for item in plan.items:
        if isinstance(item, Accepted):
            answers.append(item)
        elif isinstance(item, tuple):
            (earlier,) = item
            answers.append(Accepted(earlier.id, bodies[earlier.id], True))
        else:
            answers.append(Accepted(item.id, bodies[item.id], False))
    return answers


_KEY_CHUNK = 500  # keys per SELECT on SQLite, well under its limit on bound variables
_SELECT_KEYS = "SELECT key, fingerprint, event_id, response_body, created_at FROM idempotency_keys"


async def _load_keys(conn: AsyncConnection, dialect: str, keys: set[str]) -> dict[str, _Stored]:
    ordered = sorted(keys)
    if dialect == "postgresql":
        rows = await driver.fetch_all(
            conn, f"{_SELECT_KEYS} WHERE key = ANY($1::text[])", [ordered]
        )
    else:
        rows = []
        for start in range(0, len(ordered), _KEY_CHUNK):
            chunk = ordered[start : start + _KEY_CHUNK]
            sql = f"{_SELECT_KEYS} WHERE key IN ({', '.join('?' * len(chunk))})"
            rows += await driver.fetch_all(conn, sql, chunk)
    return {r[0]: _Stored(r[1], r[2], r[3], _created_at(r[4])) for r in rows}


def _created_at(stored: object) -> datetime:
    moment = schema.stored_utc(stored)
    assert moment is not None  # the column is NOT NULL
    return moment


async def _write(
    conn: AsyncConnection,
    dialect: str,
    new_events: list[NewEvent],
    reclaim: list[str],
    cutoff: datetime,
) -> tuple[dict[str, str], int]:
    """Insert the new events, their deliveries and keys.

    Returns each new event's 202 body (built once: it is both stored with the
    idempotency key and answered) and the number of delivery rows created.
    """
    if not new_events:
        return {}, 0
    subscriptions = await _load_subscriptions(conn)
    fanout = _fan_out(new_events, subscriptions)
    if dialect == "postgresql":
        await lock_lines(conn, [_line(r) for r in fanout])
    # SQLite stores times as text: each event's receipt is formatted once for
    # the event, its deliveries and its key.
    received = (
        {e.id: schema.sqlite_timestamp(e.received_at) for e in new_events}
        if dialect == "sqlite"
        else {}
    )
    await _insert_events(conn, dialect, new_events, received)
    if fanout:
        await mark_heads(conn, fanout)
        await _insert_deliveries(conn, dialect, fanout, received)
        if dialect == "postgresql":
            await conn.execute(text(f"NOTIFY {CHANNEL}"))
    counts = dict.fromkeys((e.id for e in new_events), 0)
    for row in fanout:
        counts[str(row["event_id"])] += 1
    bodies = {e.id: accepted_body(e, counts[e.id]) for e in new_events}
    await _insert_keys(conn, dialect, new_events, bodies, received, reclaim, cutoff)
    return bodies, len(fanout)


_SELECT_SUBSCRIPTIONS = (
    "SELECT id, event_types, ordering FROM subscriptions WHERE status <> 'disabled' ORDER BY id"
)


async def _load_subscriptions(conn: AsyncConnection) -> list[_Subscription]:
    rows = await driver.fetch_all(conn, _SELECT_SUBSCRIPTIONS)
    return [_Subscription(r[0], tuple(orjson.loads(r[1])), r[2] == "key") for r in rows]


def _fan_out(events: list[NewEvent], subscriptions: list[_Subscription]) -> list[dict[str, object]]:
    return [
        delivery_row(event.id, event.type, event.key, sub.id, sub.by_key, event.received_at)
        for event in events
        for sub in subscriptions
        if any_matches(sub.patterns, event.type)
    ]


def _line(row: dict[str, object]) -> tuple[str, str | None]:
    key = row["ordering_key"]
    return str(row["subscription_id"]), None if key is None else str(key)


# The statements every flush runs are rendered once per dialect and take plain
# tuples (app.store.driver says why). PostgreSQL gets one statement per flush
# (unnest of arrays), SQLite an executemany.
_EVENT_COLUMNS = "id, type, key, data, schema_version, occurred_at, received_at"
_KEY_COLUMNS = "key, fingerprint, event_id, response_status, response_body, created_at"
_INSERT_EVENTS = {
    "sqlite": f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
    # Rows are inserted, and so numbered (seq), in array order: a batch's order.
    "postgresql": f"INSERT INTO events ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], "
    f"$7::timestamptz[]) WITH ORDINALITY AS t({_EVENT_COLUMNS}, n) ORDER BY n",
}
_DELIVERY_COLUMNS = (
    "id, event_id, subscription_id, event_type, ordering_key, status, ready, attempts, "
    "round_attempts, next_attempt_at, created_at"
)
_DELIVERY_FIELDS = tuple(_DELIVERY_COLUMNS.split(", "))
_INSERT_DELIVERIES = {
    "sqlite": f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "postgresql": f"INSERT INTO deliveries ({_DELIVERY_COLUMNS}) SELECT {_DELIVERY_COLUMNS} "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
    "$7::boolean[], $8::int[], $9::int[], $10::timestamptz[], $11::timestamptz[]) "
    f"WITH ORDINALITY AS t({_DELIVERY_COLUMNS}, n) ORDER BY n",
}
_INSERT_KEYS = {
    "sqlite": f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO NOTHING",
    "postgresql": f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) SELECT * FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::timestamptz[]) "
    "ON CONFLICT (key) DO NOTHING RETURNING key",
}


async def _insert_deliveries(
    conn: AsyncConnection, dialect: str, fanout: list[dict[str, object]], received: dict[str, str]
) -> None:
    if dialect == "postgresql":
        rows = [tuple(row[f] for f in _DELIVERY_FIELDS) for row in fanout]
        await driver.fetch_all(conn, _INSERT_DELIVERIES[dialect], driver.columns(rows, 11))
        return
    # A new delivery is created, and due, when its event was received (_fan_out).
    await driver.execute_many(
        conn,
        _INSERT_DELIVERIES[dialect],
        [
            (
                *(row[f] for f in _DELIVERY_FIELDS[:6]),
                1 if row["ready"] else 0,
                row["attempts"],
                row["round_attempts"],
                received[str(row["event_id"])],
                received[str(row["event_id"])],
            )
            for row in fanout
        ],
    )


async def _insert_events(
    conn: AsyncConnection, dialect: str, new_events: list[NewEvent], received: dict[str, str]
) -> None:
    if dialect == "postgresql":
        rows = [
            (e.id, e.type, e.key, e.data_json, e.schema_version, e.occurred_at, e.received_at)
            for e in new_events
        ]
        await driver.fetch_all(conn, _INSERT_EVENTS[dialect], driver.columns(rows, 7))
        return
    stamp = schema.sqlite_timestamp
    await driver.execute_many(
        conn,
        _INSERT_EVENTS[dialect],
        [
            (
                e.id,
                e.type,
                e.key,
                e.data_json,
                e.schema_version,
                stamp(e.occurred_at) if e.occurred_at else None,
                received[e.id],
            )
            for e in new_events
        ],
    )


async def _insert_keys(
    conn: AsyncConnection,
    dialect: str,
    new_events: list[NewEvent],
    bodies: dict[str, str],
    received: dict[str, str],
    reclaim: list[str],
    cutoff: datetime,
) -> None:
    t = schema.idempotency_keys
    keyed = sorted(
        (e for e in new_events if e.idempotency_key), key=lambda e: e.idempotency_key or ""
    )
    if not keyed:
        return
    if reclaim:
        await conn.execute(delete(t).where(t.c.key.in_(reclaim), t.c.created_at < cutoff))
    if dialect == "postgresql":
        rows = [
            (e.idempotency_key, e.fingerprint, e.id, 202, bodies[e.id], e.received_at)
            for e in keyed
        ]
        stored = len(await driver.fetch_all(conn, _INSERT_KEYS[dialect], driver.columns(rows, 6)))
    else:
        stored = await driver.execute_many(
            conn,
            _INSERT_KEYS[dialect],
            [
                (e.idempotency_key, e.fingerprint, e.id, 202, bodies[e.id], received[e.id])
                for e in keyed
            ],
        )
    if stored != len(keyed):
        raise KeyRace()
