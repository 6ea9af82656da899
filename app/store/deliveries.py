"""The delivery worker's statements: claim, complete, release, reap.

The claim query is the heart of delivery. Both dialects are side by side
below; they differ only in PostgreSQL's ``FOR UPDATE … SKIP LOCKED`` (SQLite
has one writer, whose ``BEGIN IMMEDIATE`` transaction is lock enough).

The per-key ordering rule lives in the query: a delivery with an ordering key
is claimed only while no earlier delivery of its line is unfinished (pending,
in flight, or dead with ``on_dead_letter = 'block'``). The ``ready`` mark only
keeps the scan short; the ``NOT EXISTS`` is what guarantees the order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.database import Database, translate_errors
from app.store.lines import lock_lines, promote_heads
from app.store.schema import UTCDateTime
from app.store.subscriptions import CircuitUpdate, apply_circuit


def _sql(
    statement: str, times: tuple[str, ...] = (), expanding: tuple[str, ...] = ()
) -> TextClause:
    """Raw SQL whose time parameters go through :class:`UTCDateTime` like the ORM's."""
    params = [bindparam(name, type_=UTCDateTime()) for name in times]
    params += [bindparam(name, expanding=True) for name in expanding]
    return text(statement).bindparams(*params)


_CANDIDATES = """
    SELECT d.seq
    FROM deliveries d {index_hint}
    JOIN subscriptions s ON s.id = d.subscription_id
    WHERE d.status = 'pending' AND ready
      AND d.next_attempt_at <= :now
      AND s.status = 'active'
      AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= :now)
      AND d.subscription_id NOT IN :exclude
      AND (d.ordering_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries p
            WHERE p.subscription_id = d.subscription_id
              AND p.ordering_key = d.ordering_key
              AND p.seq < d.seq
              AND p.status IN ('pending', 'in_flight', 'dead')
              AND (p.status <> 'dead' OR s.on_dead_letter = 'block')))
    ORDER BY d.next_attempt_at, d.seq
    LIMIT :limit
"""

# SQLite's planner prefers the (status, subscription_id) index and then sorts
# the whole backlog; the claim index serves the ORDER BY ... LIMIT directly.
_SQLITE_HINT = "INDEXED BY ix_deliveries_claim"

CLAIM = {
    "postgresql": f"""
        WITH claimed AS ({_CANDIDATES.format(index_hint="")} FOR UPDATE OF d SKIP LOCKED)
        UPDATE deliveries SET status = 'in_flight', lease_owner = :owner, lease_expires_at = :lease
        FROM claimed WHERE deliveries.seq = claimed.seq
        RETURNING deliveries.seq, deliveries.id, deliveries.event_id,
                  deliveries.subscription_id, deliveries.ordering_key, deliveries.attempts,
                  deliveries.round_attempts
    """,
    "sqlite": f"""
        UPDATE deliveries SET status = 'in_flight', lease_owner = :owner, lease_expires_at = :lease
        WHERE seq IN ({_CANDIDATES.format(index_hint=_SQLITE_HINT)})
        RETURNING seq, id, event_id, subscription_id, ordering_key, attempts, round_attempts
    """,
}


@dataclass(frozen=True, slots=True)
class Claimed:
    seq: int
    id: str
    event_id: str
    subscription_id: str
    ordering_key: str | None
    attempts: int  # attempts made before this one
    round_attempts: int  # of those, since the last redrive (the retry schedule's position)


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of one attempt, as the worker writes it back."""

    delivery: Claimed
    owner: str
    status: str  # pending (retry), succeeded, dead
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None  # this attempt's transport error, if it got no status
    response_body: str | None
    next_attempt_at: datetime | None
    finished_at: datetime
    summary: str | None = None  # the delivery's ``last_error``


async def claim(
    db: Database,
    *,
    owner: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    exclude: Sequence[str],
) -> list[Claimed]:
    statement = _sql(CLAIM[db.dialect], ("now", "lease"), ("exclude",))
    async with db.write() as conn:
        rows = await conn.execute(
            statement,
            {
                "owner": owner,
                "now": now,
                "lease": lease_until,
                "limit": limit,
                "exclude": list(exclude) or ["-"],
            },
        )
        claimed = [Claimed(*r) for r in rows]
    claimed.sort(key=lambda c: c.seq)
    return claimed


_FINISH = _sql(
    """
    UPDATE deliveries SET
        status = :status, attempts = attempts + 1, round_attempts = round_attempts + 1,
        next_attempt_at = :next_attempt_at,
        last_status_code = :status_code, last_error = :error,
        completed_at = :completed_at, dead_lettered_at = :dead_lettered_at,
        lease_owner = NULL, lease_expires_at = NULL
    WHERE seq = :seq AND status = 'in_flight' AND lease_owner = :owner
    """,
    ("next_attempt_at", "completed_at", "dead_lettered_at"),
)

# Only the worker that still holds the claim records its attempt: a worker
# whose lease ran out and was taken over must not add a second "attempt 1".
_RECORD_ATTEMPT = _sql(
    """
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, error,
                          response_body)
    SELECT d.id, d.attempts + 1, :started_at, :duration_ms, :status_code, :error, :response_body
    FROM deliveries d
    WHERE d.seq = :seq AND d.status = 'in_flight' AND d.lease_owner = :owner
    """,
    ("started_at",),
)


async def complete(
    db: Database,
    completions: Sequence[Completion],
    circuit: Sequence[CircuitUpdate] = (),
    now: datetime | None = None,
) -> None:
    """Record attempts and their outcomes; free each finished line's next delivery;
    update the circuits of the subscriptions involved. One transaction."""
    if not completions:
        return
    async with db.write() as conn:
        await _complete(conn, db, completions)
        if circuit:
            await apply_circuit(conn, circuit, now or completions[-1].finished_at)


async def _complete(conn: AsyncConnection, db: Database, completions: Sequence[Completion]) -> None:
    finished_lines = [
        (c.delivery.subscription_id, c.delivery.ordering_key)
        for c in completions
        if c.status != "pending"
    ]
    if db.dialect == "postgresql":
        await lock_lines(conn, finished_lines)
    await conn.execute(
        _RECORD_ATTEMPT,
        [
            {
                "seq": c.delivery.seq,
                "owner": c.owner,
                "started_at": c.started_at,
                "duration_ms": c.duration_ms,
                "status_code": c.status_code,
                "error": c.error,
                "response_body": c.response_body,
            }
            for c in completions
        ],
    )
    await conn.execute(_FINISH, [_finish_params(c) for c in completions])
    await promote_heads(conn, finished_lines)


def _finish_params(c: Completion) -> dict[str, object]:
    finished = c.finished_at
    return {
        "seq": c.delivery.seq,
        "owner": c.owner,
        "status": c.status,
        "next_attempt_at": c.next_attempt_at if c.status == "pending" else finished,
        "status_code": c.status_code,
        "error": c.summary,
        "completed_at": finished if c.status == "succeeded" else None,
        "dead_lettered_at": finished if c.status == "dead" else None,
    }


async def release(db: Database, owner: str, seqs: Sequence[int]) -> None:
    """Give claimed deliveries back untouched (shutdown, or over a subscription's limit)."""
    if not seqs:
        return
    statement = _sql(
        "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL "
        "WHERE seq IN :seqs AND status = 'in_flight' AND lease_owner = :owner",
        expanding=("seqs",),
    )
    async with db.write() as conn:
        await conn.execute(statement, {"seqs": list(seqs), "owner": owner})


async def renew_leases(db: Database, owner: str, until: datetime) -> None:
    statement = _sql(
        "UPDATE deliveries SET lease_expires_at = :until "
        "WHERE status = 'in_flight' AND lease_owner = :owner",
        ("until",),
    )
    async with db.write() as conn:
        await conn.execute(statement, {"owner": owner, "until": until})


async def reap_expired_leases(db: Database, now: datetime) -> int:
    """Deliveries whose worker vanished go back to pending."""
    statement = _sql(
        "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL "
        "WHERE status = 'in_flight' AND lease_expires_at < :now",
        ("now",),
    )
    async with db.write() as conn:
        result = await conn.execute(statement, {"now": now})
    return int(result.rowcount)


async def release_all_leases(db: Database) -> int:
    """SQLite only (one worker process): whatever is in flight belonged to a dead worker."""
    statement = text(
        "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL "
        "WHERE status = 'in_flight'"
    )
    async with db.write() as conn:
        result = await conn.execute(statement)
    return int(result.rowcount)


async def next_due(db: Database) -> datetime | None:
    """When the earliest ready delivery falls due (the worker sleeps until then)."""
    hint = _SQLITE_HINT if db.is_sqlite else ""
    statement = text(
        f"SELECT min(next_attempt_at) AS due FROM deliveries {hint} "
        "WHERE status = 'pending' AND ready"
    ).columns(due=UTCDateTime())
    async with db.read() as conn:
        due: datetime | None = (await conn.execute(statement)).scalar()
    return due


_CHURNING_TABLES = "deliveries, attempts, events, idempotency_keys"


async def refresh_statistics(db: Database) -> None:
    """After pruning: keep the planners' statistics current and, on PostgreSQL,
    make the deleted rows' space reusable at once (autovacuum would get there,
    but under steady churn the tables would grow in the meantime)."""
    if db.is_sqlite:
        async with db.write() as conn:
            await conn.execute(text("PRAGMA optimize"))
        return
    with translate_errors():
        async with db.writer.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text(f"VACUUM (ANALYZE) {_CHURNING_TABLES}"))
