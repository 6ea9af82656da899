"""The claim query's plan on PostgreSQL: the ``ix_deliveries_claim`` partial index
is what finds claimable deliveries, chosen by the planner on its own (no
``enable_seqscan = off``), so an index or query change cannot silently turn every
claim into a scan of the whole table.

asyncpg prepares statements, and after five runs PostgreSQL may switch a
prepared statement to a generic plan (one that ignores the parameter values),
so both the custom and the generic plan are checked: a generic claim plan that
sorted the whole backlog once took 13 ms a claim at 20,000 pending. The
worker's outcome write is checked the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import TextClause, text

from app.store.claims import _PG_CLAIM, _PG_CLAIM_RESUMING, FRESH_WINDOW
from app.store.database import Database
from app.store.leases import _PG_GIVE_BACK
from app.store.outcomes import _FINISH_AND_RECORD_PG
from app.store.retention import refresh_statistics
from tests.integration.conftest import DeliveryKit
from tests.integration.plans import describe, postgres_plan

pytestmark = [
    pytest.mark.parametrize("backend", ["postgres"], indirect=True),
    pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"]),
]

EVENTS = 5000
SUBSCRIPTIONS = 4

# Most rows are history (succeeded), a few hundred wait: the shape of a live table.
_FILL = [
    """
    INSERT INTO events (id, type, key, data, received_at)
    SELECT 'evt_' || lpad(g::text, 26, '0'), 'order.created', 'k' || (g % 200), '{}',
           now() - interval '1 hour' + g * interval '10 ms'
    FROM generate_series(1, :events) AS g
    """,
    """
    INSERT INTO deliveries (id, event_id, subscription_id, event_type, ordering_key, status,
                            ready, next_attempt_at, created_at, completed_at)
    SELECT 'dlv_' || lpad((g * 10 + s.n)::text, 26, '0'),
           'evt_' || lpad(g::text, 26, '0'),
           s.id, 'order.created', 'k' || (g % 200),
           CASE WHEN g <= :events - 200 THEN 'succeeded' ELSE 'pending' END,
           g > :events - 200 AND g <= :events - 100,
           now() - interval '1 hour' + g * interval '10 ms',
           now() - interval '1 hour' + g * interval '10 ms',
           CASE WHEN g <= :events - 200 THEN now() END
    FROM generate_series(1, :events) AS g
    CROSS JOIN (SELECT id, row_number() OVER (ORDER BY id) AS n FROM subscriptions) AS s
    """,
]

# One subscription without ordering and its whole backlog pending: the drain
# benchmark's shape, where every row is ready and the statistics know one
# subscription.
_BACKLOG = [
    _FILL[0],
    """
    INSERT INTO deliveries (id, event_id, subscription_id, event_type, ordering_key, status,
                            ready, next_attempt_at, created_at)
    SELECT 'dlv_' || lpad(g::text, 26, '0'), 'evt_' || lpad(g::text, 26, '0'),
           (SELECT id FROM subscriptions), 'order.created', NULL, 'pending', TRUE,
           now() - interval '1 hour' + g * interval '10 ms',
           now() - interval '1 hour' + g * interval '10 ms'
    FROM generate_series(1, :events) AS g
    """,
]

_ANALYZE = ["ANALYZE events", "ANALYZE subscriptions", "ANALYZE deliveries"]


async def _plan(
    db: Database, statement: TextClause, params: dict[str, Any], mode: str
) -> list[dict[str, Any]]:
    """The plan the worker's prepared statement runs with, as asyncpg prepares it."""
    compiled = statement.compile(dialect=db.writer.dialect)
    names = list(compiled.positiontup or [])
    return await postgres_plan(db, compiled.string, [params[n] for n in names], mode)


def _scans_of_deliveries(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    whole = ("Seq Scan", "Bitmap Heap Scan")
    return [n for n in nodes if n["Node Type"] in whole and n.get("Relation Name") == "deliveries"]


async def _fill(kit: DeliveryKit, statements: list[str]) -> None:
    async with kit.db.write() as conn:
        for statement in [*statements, *_ANALYZE]:
            await conn.execute(text(statement), {"events": EVENTS})


async def _assert_claim_uses_the_claim_index(
    kit: DeliveryKit, plan_mode: str, *, without_sort: bool, runs: bool = False
) -> None:
    # Both walks: the fresh one (the newest due deliveries, past a crowding
    # tenant's subscriptions) and the oldest; and the claim that also takes a
    # resumed subscription's parked deliveries.
    now = datetime.now(UTC)
    params = {
        "owner": "worker-a",
        "now": now,
        "lease": now + timedelta(minutes=1),
        "limit": 128,
        "fresh": 16,
        "oldest": 128,
        "exclude": ["-"],
        "crowding": ["sub_crowding"],
        "freed_subs": ["sub_freed"] * 8,
        "freed_keys": [f"k{n}" for n in range(8)],
        "followers": 15,
        "single": ["-"],
    }
    for statement, resumed in ((_PG_CLAIM, None), (_PG_CLAIM_RESUMING, ["sub_resumed"])):
        nodes = await _plan(kit.db, statement, {**params, "resumed": resumed}, plan_mode)
        described = describe(nodes)
        walks = [n for n in nodes if n.get("Index Name") == "ix_deliveries_claim"]
        assert len(walks) >= 2, f"ix_deliveries_claim is not walked twice:\n{described}"
        parked = [n for n in nodes if n.get("Index Name") == "ix_deliveries_parked"]
        assert bool(parked) == bool(resumed), f"the parked walk:\n{described}"
        if runs:  # each head's run: its line walked on the line index
            lines = [n for n in nodes if n.get("Alias") == "f"]
            assert lines, f"no run walked:\n{described}"
            assert all(n.get("Index Name") == "ix_deliveries_line" for n in lines), (
                f"the runs do not walk ix_deliveries_line:\n{described}"
            )
        assert not _scans_of_deliveries(nodes), f"the claim scans deliveries:\n{described}"
        if without_sort:  # a backlog is walked in index order, never sorted: only the window is
            assert all("Index" in n["Node Type"] for n in walks), f"not walked:\n{described}"
            sorts = [n for n in nodes if n["Node Type"] == "Sort"]
            assert all(n["Plan Rows"] <= FRESH_WINDOW for n in sorts), f"it sorts:\n{described}"


async def test_claim_uses_the_claim_index(kit: DeliveryKit, plan_mode: str) -> None:
    for _ in range(SUBSCRIPTIONS):
        await kit.subscription()
    await _fill(kit, _FILL)
    async with kit.db.read() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM deliveries"))).scalar()
    assert count == EVENTS * SUBSCRIPTIONS
    await _assert_claim_uses_the_claim_index(kit, plan_mode, without_sort=False, runs=True)


async def test_claim_walks_the_claim_index_through_one_subscriptions_backlog(
    kit: DeliveryKit, plan_mode: str
) -> None:
    await kit.subscription(ordering="none")
    await _fill(kit, _BACKLOG)
    await _assert_claim_uses_the_claim_index(kit, plan_mode, without_sort=True)


async def test_claim_walks_the_backlog_once_the_worker_refreshed_statistics(
    kit: DeliveryKit, plan_mode: str
) -> None:
    """A fresh install: nothing analyzed until the worker's retention job
    refreshes the statistics (at the worker's start, then after every pass).
    The subscriptions are never analyzed otherwise (too small for autovacuum),
    and without their statistics the claim sorted the whole backlog."""
    await kit.subscription(ordering="none")
    async with kit.db.write() as conn:
        for statement in _BACKLOG:
            await conn.execute(text(statement), {"events": EVENTS})
    await refresh_statistics(kit.db)
    await _assert_claim_uses_the_claim_index(kit, plan_mode, without_sort=True)


@pytest.mark.parametrize("shape", ["backlog", "lines"])
async def test_outcome_write_does_not_scan_the_deliveries(
    kit: DeliveryKit, plan_mode: str, shape: str
) -> None:
    """The outcome write, with the promotion of the heads its deliveries free:
    over one backlog without ordering, and over a history of keyed lines."""
    if shape == "backlog":
        await kit.subscription(ordering="none")
        await _fill(kit, _BACKLOG)
    else:
        for _ in range(SUBSCRIPTIONS):
            await kit.subscription()
        await _fill(kit, _FILL)
    now = datetime.now(UTC)
    n = 32
    nodes = await _plan(
        kit.db,
        _FINISH_AND_RECORD_PG,
        {
            "seq": list(range(1, n + 1)),
            "outcomes": orjson.dumps(
                [
                    (
                        seq,
                        "worker-a",
                        "succeeded",
                        now,
                        200,
                        None,
                        now,
                        None,
                        now,
                        1,
                        None,
                        "ok",
                        '{"webhook-id":"evt"}',
                    )
                    for seq in range(1, n + 1)
                ]
            ).decode(),
            "line_locks": [f"sub\x1fk{i}" for i in range(n)],
            "followed": list(range(1, n // 2)),
        },
        plan_mode,
    )
    described = describe(nodes)
    assert not _scans_of_deliveries(nodes), f"the outcome write scans deliveries:\n{described}"
    # Deliveries given back in the cycle: a run after its predecessor's retry
    # or dead letter, or what the worker will not start.
    nodes = await _plan(
        kit.db, _PG_GIVE_BACK, {"seqs": list(range(1, 16)), "owner": "worker-a"}, plan_mode
    )
    described = describe(nodes)
    assert not _scans_of_deliveries(nodes), f"giving back scans deliveries:\n{described}"
