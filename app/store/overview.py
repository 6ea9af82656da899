"""What the console's overview and subscription pages read: recent ingest per
minute, the outcome of the latest attempts, the failing subscriptions and
backlogs. Every read is bounded, whatever the history holds: index ranges
counted up to a cap, a fixed window of attempts, one probe per boundary."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, literal, or_, select, text, union_all

from app.store import schema
from app.store.counts import capped_count
from app.store.database import Database
from app.store.events import delivery_status_is
from app.store.gauges import SubscriptionHealth

e, d, s = schema.events, schema.deliveries, schema.subscriptions


def _first_seq_from(moment: datetime) -> Select[int]:
    # One probe of ``ix_events_received_at``.
    return select(e.c.seq).where(e.c.received_at >= moment).order_by(e.c.received_at).limit(1)


async def events_per_minute(
    db: Database, tenant_id: str, now: datetime, minutes: int, cap: int
) -> list[int]:
    """Events the tenant received in each of the ``minutes`` one-minute windows
    ending at ``now``, oldest first, each counted up to ``cap``.

    A window is a ``seq`` range: from the first event received at or after its
    start to the first received at or after its end (an index probe each), then
    counted on the tenant's ``(tenant_id, seq)`` index. The tenant's events are
    never filtered out of everyone's by time; an event whose ``seq`` and
    receipt order disagree across a minute's edge (concurrent ingest, within
    a second) counts in the neighbouring minute."""
    starts = [now - timedelta(minutes=back) for back in range(minutes, -1, -1)]
    probes = select(*(_first_seq_from(start).scalar_subquery() for start in starts))
    async with db.read() as conn:
        edges = list((await conn.execute(probes)).one())
        windows: list[ColumnElement[int]] = []
        for low, high in zip(edges, edges[1:], strict=False):
            if low is None:
                windows.append(literal(0))
                continue
            rows = select(e.c.seq).where(e.c.tenant_id == tenant_id, e.c.seq >= low)
            if high is not None:
                rows = rows.where(e.c.seq < high)
            windows.append(capped_count(rows, cap).scalar_subquery())
        return [int(n) for n in (await conn.execute(select(*windows))).one()]


# The tenant's latest attempts: a walk down its events newest first (its
# ``(tenant_id, seq)`` index), each event's deliveries by event ID and their
# attempts by delivery ID, stopping at ``:window`` attempts or ``:events``
# events, whichever comes first. No other tenant's rows are read, so a quiet
# tenant on a busy installation still sees its own share. PostgreSQL: each
# LATERAL has a LIMIT, which PostgreSQL does not flatten into a join, so the
# plan stays a probe per row whatever the statistics say (as joins, they were
# hashed against the whole table).
_OUTCOMES_PG = text(
    """
    SELECT count(*), count(*) FILTER (WHERE latest.status_code BETWEEN 200 AND 299)
    FROM (
        SELECT a.status_code
        FROM (
            SELECT id FROM events WHERE tenant_id = :tenant ORDER BY seq DESC LIMIT :events
        ) ev
        CROSS JOIN LATERAL (
            SELECT id FROM deliveries WHERE event_id = ev.id LIMIT :window
        ) dl
        CROSS JOIN LATERAL (
            SELECT status_code FROM attempts WHERE delivery_id = dl.id LIMIT :window
        ) a
        LIMIT :window
    ) latest
    """
)
_OUTCOMES_SQLITE = text(
    """
    SELECT count(*), coalesce(sum(latest.status_code BETWEEN 200 AND 299), 0)
    FROM (
        SELECT a.status_code
        FROM (
            SELECT id FROM events WHERE tenant_id = :tenant ORDER BY seq DESC LIMIT :events
        ) ev
        JOIN deliveries d ON d.event_id = ev.id
        JOIN attempts a ON a.delivery_id = d.id
        LIMIT :window
    ) latest
    """
)


async def attempt_outcomes(
    db: Database, tenant_id: str, window: int, events: int
) -> tuple[int, int]:
    """How many attempts the tenant's latest ``events`` events have had, up to
    ``window``, and how many of those got a 2xx answer."""
    statement = _OUTCOMES_SQLITE if db.is_sqlite else _OUTCOMES_PG
    async with db.read() as conn:
        params = {"window": window, "events": events, "tenant": tenant_id}
        counted, succeeded = (await conn.execute(statement, params)).one()
    return int(counted), int(succeeded)


async def failing_subscriptions(
    db: Database, tenant_id: str, now: datetime
) -> list[SubscriptionHealth]:
    """The tenant's subscriptions with failures in a row or an open circuit."""
    query = select(
        s.c.id, s.c.tenant_id, s.c.status, s.c.consecutive_failures, s.c.circuit_open_until
    ).where(
        s.c.tenant_id == tenant_id,
        or_(s.c.consecutive_failures > 0, s.c.circuit_open_until > now),
    )
    async with db.read() as conn:
        return [SubscriptionHealth(*r) for r in await conn.execute(query)]


def _backlog(status: str, *where: ColumnElement[bool]) -> Select[int]:
    return select(d.c.seq).where(delivery_status_is(status), *where)


async def tenant_backlog(db: Database, tenant_id: str, cap: int) -> tuple[int, int]:
    """The tenant's pending deliveries and dead letters, each counted up to ``cap``."""
    theirs = d.c.subscription_id.in_(select(s.c.id).where(s.c.tenant_id == tenant_id))
    pending = capped_count(_backlog("pending", theirs), cap).scalar_subquery()
    dead = capped_count(_backlog("dead", d.c.tenant_id == tenant_id), cap).scalar_subquery()
    async with db.read() as conn:
        found = (await conn.execute(select(pending, dead))).one()
    return int(found[0]), int(found[1])


async def subscription_backlogs(
    db: Database, subscription_ids: Sequence[str], cap: int
) -> dict[str, tuple[int, int]]:
    """Pending deliveries and dead letters of each subscription, each counted
    up to ``cap``: a range of ``(status, subscription_id)`` per figure."""
    if not subscription_ids:
        return {}
    rows = [
        select(
            literal(sid),
            capped_count(_backlog("pending", d.c.subscription_id == sid), cap).scalar_subquery(),
            capped_count(_backlog("dead", d.c.subscription_id == sid), cap).scalar_subquery(),
        )
        for sid in subscription_ids
    ]
    query = rows[0] if len(rows) == 1 else union_all(*rows)
    async with db.read() as conn:
        return {r[0]: (int(r[1]), int(r[2])) for r in await conn.execute(query)}
