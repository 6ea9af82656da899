"""Operator events in the transactions that make the changes they report.

The worker's cycle (:func:`app.store.deliveries.complete_and_claim`) reports
the deliveries it dead-letters and the circuits and statuses it changes; the
subscription service reports a ``PATCH`` that disables. A report is made
only when some subscription listens (a pattern naming reserved types), so a
cycle that dead-letters with no listener writes nothing more than before (on
SQLite it reads the listeners once, and only when it has something to
report; on PostgreSQL the outcome write answers that itself). With
listeners, each reads, in the same transaction and before its change,
exactly what the change will do: the dead completions whose delivery is
still leased to their writer (a worker whose lease was taken over records
nothing, so reports nothing; on PostgreSQL the outcome write returns them),
and the status of the subscriptions it changes (disabling one twice is one
event; one deleted meanwhile is not reported on). The events are stored and
fanned out like ingested ones (:func:`app.store.fanout.store_events`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain import operator_events as ops
from app.domain.events import NewEvent
from app.store import driver
from app.store.fanout import (
    Subscriber,
    listeners,
    listeners_sqlite,
    store_events,
    store_events_sqlite,
)
from app.store.subscriptions import CircuitUpdate
from app.store.work import Completion

__all__ = [
    "Subscriber",
    "listeners",
    "listeners_sqlite",
    "store_events",
    "store_events_sqlite",
]

# SQLite's one writer reads, before the outcomes are written, the dead
# completions whose delivery is still leased to their writer: exactly the rows
# the write will change. PostgreSQL's outcome write answers with them itself
# (app.store.outcomes).
_LEASED = (
    "SELECT seq, id, event_id, subscription_id, event_type, attempts, lease_owner, tenant_id "
    "FROM deliveries WHERE status = 'in_flight' AND seq IN {marks} ORDER BY seq"
)
# Locked on PostgreSQL, so that the change and its report agree.
_STATUSES = "SELECT id, status, tenant_id FROM subscriptions WHERE id "
_PG_STATUSES = _STATUSES + "= ANY($1::text[]) ORDER BY id FOR UPDATE"


def dying(completions: Iterable[Completion]) -> dict[int, Completion]:
    """The completions that dead-letter their delivery, by ``seq``."""
    return {c.delivery.seq: c for c in completions if c.status == "dead"}


def changing(updates: Iterable[CircuitUpdate]) -> list[str]:
    """The subscriptions whose circuit moved or that a cycle disables."""
    return sorted({u.subscription_id for u in updates if u.change is not None or u.disable_reason})


def reporting(completions: Iterable[Completion], updates: Iterable[CircuitUpdate]) -> list[str]:
    """The subscriptions a cycle may report on (a superset): those with a dead
    completion, a circuit that moved, or a disable. Empty: nothing to read."""
    about = {c.delivery.subscription_id for c in completions if c.status == "dead"}
    about |= {
        u.subscription_id for u in updates if u.change is not None or u.disable_reason is not None
    }
    return sorted(about)


def dead_letters_sqlite(
    conn: sqlite3.Connection, dead: dict[int, Completion]
) -> list[ops.DeadLetter]:
    """Before the outcomes are written, on SQLite's writer thread: which of
    ``dead`` will dead-letter a delivery, in ``seq`` order, as their rows will
    then say; only those whose event is reported (no loops)."""
    if not dead:
        return []
    seqs = sorted(dead)
    found = []
    rows = conn.execute(_LEASED.format(marks=driver.marks(len(seqs))), seqs)
    for seq, delivery_id, event_id, subscription_id, event_type, attempts, owner, tenant in rows:
        completion = dead[int(seq)]
        if owner == completion.owner and ops.reports_dead_letter(event_type):
            found.append(
                ops.DeadLetter(
                    delivery_id,
                    subscription_id,
                    event_id,
                    event_type,
                    int(attempts) + 1,
                    completion.status_code,
                    completion.summary,
                    tenant,
                )
            )
    return found


def reported_dead_letters(rows: Iterable[Sequence[Any]]) -> list[ops.DeadLetter]:
    """The dead letters an outcome write returned (PostgreSQL: ``seq``, ``id``,
    ``event_id``, ``subscription_id``, ``event_type``, ``attempts``,
    ``last_status_code``, ``last_error``, ``tenant_id``), those whose event is
    reported."""
    return [
        ops.DeadLetter(r[1], r[3], r[2], r[4], int(r[5]), r[6], r[7], r[8])
        for r in rows
        if ops.reports_dead_letter(r[4])
    ]


Statuses = dict[str, tuple[str, str]]  # subscription ID -> (status, tenant ID)


async def statuses(conn: AsyncConnection, ids: Sequence[str]) -> Statuses:
    """Before a change to subscriptions ``ids``: the status and tenant of each
    that exists."""
    if not ids:
        return {}
    if conn.dialect.name == "postgresql":
        rows = await driver.fetch_all(conn, _PG_STATUSES, [list(ids)])
    else:
        rows = await driver.fetch_all(conn, f"{_STATUSES} IN {driver.marks(len(ids))}", ids)
    return {str(r[0]): (str(r[1]), str(r[2])) for r in rows}


def statuses_sqlite(conn: sqlite3.Connection, ids: Sequence[str]) -> Statuses:
    if not ids:
        return {}
    rows = conn.execute(f"{_STATUSES} IN {driver.marks(len(ids))}", list(ids))
    return {r[0]: (r[1], r[2]) for r in rows}


def disabled_now(subscription_id: str, before: Statuses) -> bool:
    """Whether disabling ``subscription_id`` changes it (it exists, not disabled)."""
    return before.get(subscription_id, ("disabled", ""))[0] != "disabled"


def cycle_events(
    dead: Sequence[ops.DeadLetter],
    updates: Iterable[CircuitUpdate],
    before: Statuses,
    at: datetime,
) -> list[NewEvent]:
    """What one worker cycle reports: its dead letters, then each subscription it
    disabled (that was not disabled already) or whose circuit opened or closed
    (that still exists: ``before`` holds the statuses read before the change)."""
    events = [ops.dead_lettered(d, at) for d in dead]
    for u in updates:
        sid = u.subscription_id
        if u.disable_reason is not None:
            if disabled_now(sid, before):
                events.append(ops.disabled(before[sid][1], sid, u.disable_reason, at))
        elif u.change is not None and sid in before:
            events.append(
                ops.circuit_changed(
                    before[sid][1],
                    sid,
                    opened=u.change.opened,
                    consecutive_failures=u.change.consecutive_failures,
                    at=at,
                )
            )
    return events
