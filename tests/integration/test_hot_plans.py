"""No hot statement's plan depends on fresh statistics.

Every statement that ingest, the worker's cycle, the DLQ, replay, retention,
the gauges and the list endpoints send is captured while those paths run
against tables grown well past the size where a plan made for a small table
flips to a scan (PostgreSQL) with statistics left as they were before the
tables grew; then each one is planned again:

* PostgreSQL, with the generic plan forced (the plan a prepared statement
  keeps when PostgreSQL stops looking at the parameters) and with the custom
  plan, must read no growing table whole.
* SQLite, with no statistics and with statistics gathered while the tables
  were small, must read no growing table whole either.

A stale *cached* plan is the other half: :func:`test_a_plan_made_while_small_is_not_kept`
prepares statements on the product's own connection while the tables are
small, grows them, and checks that the next run plans afresh.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store import database, leases
from app.store.database import open_database
from app.store.gauges import snapshot
from app.store.ingest import _PG_READ
from app.store.retention import _delete_batch_sql, prune, refresh_statistics
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import DeliveryKit
from tests.integration.plans import (
    Statement,
    captured_statements,
    describe,
    distinct,
    plan_nodes,
    postgres_plan,
    postgres_scans,
    sqlite_plan,
    sqlite_scans,
)

ROWS = 20_000

# Grown by SQL, in the shapes a live database has: mostly history (succeeded
# deliveries with their attempts, remembered keys), a backlog, dead letters.
_GROW_POSTGRES = [
    """
    INSERT INTO events (id, type, key, data, received_at)
    SELECT 'evt_grown' || lpad(g::text, 22, '0'), 'order.created', 'k' || (g % 500), '{}',
           now() - interval '2 days' + g * interval '1 s'
    FROM generate_series(1, :rows) AS g
    """,
    """
    INSERT INTO deliveries (id, event_id, subscription_id, event_type, ordering_key, status,
                            ready, next_attempt_at, created_at, completed_at, dead_lettered_at,
                            attempts)
    SELECT 'dlv_grown' || lpad(g::text, 22, '0'), 'evt_grown' || lpad(g::text, 22, '0'),
           (SELECT min(id) FROM subscriptions), 'order.created', NULL,
           CASE WHEN g % 50 = 0 THEN 'dead' WHEN g % 7 = 0 THEN 'pending' ELSE 'succeeded' END,
           TRUE, now() + interval '1 hour', now() - interval '2 days' + g * interval '1 s',
           CASE WHEN g % 50 <> 0 AND g % 7 <> 0 THEN now() - interval '1 day' END,
           CASE WHEN g % 50 = 0 THEN now() - interval '1 day' END, 1
    FROM generate_series(1, :rows) AS g
    """,
    """
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code)
    SELECT 'dlv_grown' || lpad(g::text, 22, '0'), 1, now() - interval '1 day', 5, 200
    FROM generate_series(1, :rows) AS g
    """,
    """
    INSERT INTO idempotency_keys (key, fingerprint, event_id, response_status, response_body,
                                  created_at)
    SELECT 'grown-' || g, 'f', 'evt_grown' || lpad(g::text, 22, '0'), 202, '{}',
           now() - interval '2 days' + g * interval '1 s'
    FROM generate_series(1, :rows) AS g
    """,
]


async def _drive_hot_paths(client: httpx.AsyncClient, kit: DeliveryKit) -> None:
    """Everything a busy installation runs, once each, with its real parameters."""
    subs = []
    for ordering in ("key", "none"):
        created = await client.post(
            "/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/hook", "event_types": ["*"], "ordering": ordering},
        )
        assert created.status_code == 201, created.text
        subs.append(created.json()["id"])
    # Operator events: a listener, so that the dead letters below are reported
    # and delivered, and a subscription disabled by PATCH.
    for event_types in (["eventrelay.*"], ["spare.*"]):
        created = await client.post(
            "/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/ops", "event_types": event_types},
        )
        assert created.status_code == 201, created.text
    spare = created.json()["id"]
    disabled = await client.patch(f"/v1/subscriptions/{spare}", json={"status": "disabled"})
    assert disabled.status_code == 200, disabled.text
    event = {"type": "order.created", "key": "k1", "data": {"n": 1}}
    first = None
    for n in range(3):
        answer = await client.post("/v1/events", json=event, headers={"Idempotency-Key": f"i{n}"})
        assert answer.status_code == 202, answer.text
        first = first or answer.json()["id"]
    replayed = await client.post("/v1/events", json=event, headers={"Idempotency-Key": "i0"})
    assert replayed.json()["id"] == first, replayed.text
    # A key remembered longer than the TTL (grown two days ago on PostgreSQL)
    # is taken again: the flush deletes the expired row as it stores the new.
    expired = await client.post("/v1/events", json=event, headers={"Idempotency-Key": "grown-7"})
    assert expired.status_code == 202, expired.text
    batch = {"events": [{**event, "key": f"k{n}", "idempotency_key": f"b{n}"} for n in range(3)]}
    assert (await client.post("/v1/events/batch", json=batch)).is_success
    event_id = replayed.json()["id"]

    # The worker's cycle: claim, outcomes of every kind, lease upkeep.
    now = datetime.now(UTC)
    claimed = await kit.claim(limit=20)
    assert claimed
    for one, status in zip(claimed, ["succeeded", "pending", "dead"] * 10, strict=False):
        await kit.finish(one, status, next_attempt_at=now + timedelta(hours=1))
    again = await kit.claim(limit=5)
    seqs = [c.seq for c in again]
    await leases.renew_leases(kit.db, "worker-a", seqs, now + timedelta(minutes=5))
    await leases.release(kit.db, "worker-a", seqs)
    await leases.reap_expired_leases(kit.db, now)
    await leases.next_due(kit.db, after=now)
    await snapshot(kit.db)

    # What operators and the lists read.
    for query in ("", "?type=order.created", "?key=k1", "?order=asc", "?limit=2"):
        page = await client.get(f"/v1/events{query}")
        assert page.status_code == 200, page.text
    cursor = (await client.get("/v1/events?limit=2")).json()["next_cursor"]
    assert (await client.get(f"/v1/events?limit=2&cursor={cursor}")).status_code == 200
    assert (await client.get(f"/v1/events/{event_id}")).status_code == 200
    assert (await client.get(f"/v1/events/{event_id}/attempts")).status_code == 200
    assert (await client.get("/v1/subscriptions")).status_code == 200
    for query in ("", f"?subscription_id={subs[0]}", "?event_type=order.created", "?limit=1"):
        page = await client.get(f"/v1/dlq{query}")
        assert page.status_code == 200, page.text
    dead = (await client.get("/v1/dlq?limit=3")).json()["items"]
    assert len(dead) >= 2, dead
    assert (await client.get(f"/v1/dlq/{dead[0]['id']}")).status_code == 200
    assert (await client.post(f"/v1/dlq/{dead[0]['id']}/redrive")).status_code == 202
    assert (await client.delete(f"/v1/dlq/{dead[1]['id']}")).status_code == 204
    redriven = await client.post("/v1/dlq/redrive", json={"subscription_id": subs[1]})
    assert redriven.status_code == 200, redriven.text
    since = (now - timedelta(minutes=1)).isoformat()
    replay = await client.post(f"/v1/subscriptions/{subs[0]}/replay", json={"since": since})
    assert replay.status_code == 202, replay.text

    # What the console reads and writes: its pages are views of the same
    # services, plus sign-in, the overview's figures and the DLQ's count.
    window = {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat()}
    for params in (window, {"delivery_status": "dead"}, {**window, "type": "order.created"}):
        page = await client.get("/v1/events", params=params)
        assert page.status_code == 200, page.text
    assert (await client.get("/v1/tokens")).status_code == 200
    signed = await client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
    assert signed.status_code == 303, signed.text
    for path in (
        "/console/",
        "/console/dlq",
        f"/console/dlq?subscription_id={subs[0]}",
        "/console/subscriptions",
        f"/console/events?status=dead&since={quote(window['since'])}",
        f"/console/events/{event_id}",
        "/console/tokens",
    ):
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text[:500])

    # Retention, with cutoffs that keep what the paths above made.
    day_ago = now - timedelta(days=1, hours=1)
    await prune(kit.db, cutoff=day_ago, keys_cutoff=day_ago, batch=50)


async def _capture(client: httpx.AsyncClient, kit: DeliveryKit) -> list[Statement]:
    with captured_statements() as seen:
        await _drive_hot_paths(client, kit)
    statements = distinct(seen)
    assert len(statements) >= 25, f"too few statements captured: {len(statements)}"
    return statements


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("plan_mode", ["force_generic_plan", "force_custom_plan"])
async def test_no_hot_statement_scans_a_grown_table_postgres(
    client: httpx.AsyncClient, kit: DeliveryKit, plan_mode: str
) -> None:
    await kit.subscription(url="http://127.0.0.1:9/grown")
    async with kit.db.write() as conn:
        for statement in _GROW_POSTGRES:
            await conn.execute(text(statement), {"rows": ROWS})
    statements = await _capture(client, kit)
    failures = []
    for sql, params in statements:
        nodes = await postgres_plan(kit.db, sql, params, plan_mode)
        if postgres_scans(nodes):
            failures.append(f"{sql}\n{describe(nodes)}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_no_hot_statement_scans_a_table_sqlite(
    client: httpx.AsyncClient, kit: DeliveryKit, database_url: str
) -> None:
    statements = await _capture(client, kit)
    await refresh_statistics(kit.db)  # what the retention job does after a pass
    path = Path(database_url.split(":///", 1)[1])
    with sqlite3.connect(path) as conn:
        # SQLite plans from sqlite_stat1 alone, never from a table's size; with
        # none it takes every table as large, and eventrelay keeps none.
        assert not conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'sqlite_stat%'"
        ).fetchall()
        failures = []
        for sql, params in statements:
            steps = sqlite_plan(conn, sql, params)
            if sqlite_scans(sql, steps):
                failures.append(f"{sql}\n{steps}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_the_upkeep_on_sqlites_writer_thread_scans_and_sorts_no_table(
    kit: DeliveryKit, database_url: str
) -> None:
    """The statements the writer's thread runs for the worker's upkeep (lease
    renewal, reaping, give-backs) and the retention pass: sqlite3's own, so the
    capture above does not see them. Neither reads a growing table whole nor
    sorts one (the retention pass once sorted every succeeded delivery)."""
    stored = {
        "cutoff": "2026-01-01 00:00:00.000000",
        "after": "1970-01-01 00:00:00.000000",
        "now": "2026-01-01 00:00:00.000000",
        "until": "2026-01-01 00:05:00.000000",
        "owner": "worker-a",
        "seqs": "[1, 2, 3]",
    }
    statements = [leases._SQLITE_RENEW, leases._SQLITE_REAP, leases.SQLITE_GIVE_BACK]
    for table in ("deliveries", "events", "idempotency_keys"):
        statements += _delete_batch_sql(table, "sqlite", 500)
    path = Path(database_url.split(":///", 1)[1])
    failures = []
    with sqlite3.connect(path) as conn:
        for sql in statements:
            steps = sqlite_plan(conn, sql, stored)
            if sqlite_scans(sql, steps) or any("TEMP B-TREE" in step for step in steps):
                failures.append(f"{sql}\n{steps}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_plan_made_while_small_is_not_kept(kit: DeliveryKit) -> None:
    """The measured defect: the idempotency lookup, prepared while its table was
    small, kept a scan as its generic plan while the table grew to 100,000s of
    keys (one full scan per group commit). On eventrelay's own connections the
    next run after the table grew plans again and probes the key index."""
    async with kit.db.read() as conn:
        await _prepare_lookup_while_small(conn)
        async with kit.db.write() as grow:
            await grow.execute(text(_GROW_POSTGRES[-1]), {"rows": ROWS})
        nodes = await _lookup_plan(conn, "grown-7")
    assert not postgres_scans(nodes), describe(nodes)
    assert any(n.get("Index Name") == "pk_idempotency_keys" for n in nodes), describe(nodes)


async def _prepare_lookup_while_small(conn: AsyncConnection) -> None:
    """The idempotency lookup prepared on ``conn`` and run until PostgreSQL has
    settled on its plan, while the table is small."""
    await conn.exec_driver_sql(f"PREPARE lookup(text[], text[], text[]) AS {_PG_READ}")
    for n in range(10):  # PostgreSQL settles on a generic plan after five runs
        await conn.exec_driver_sql(
            f"EXECUTE lookup(ARRAY['default'], ARRAY['small-{n}'], ARRAY['default'])"
        )
    await conn.commit()


async def _lookup_plan(conn: AsyncConnection, key: str) -> list[dict[str, Any]]:
    """The plan the prepared lookup runs with now, for ``key``."""
    document = (
        await conn.exec_driver_sql(
            f"EXPLAIN (FORMAT JSON) EXECUTE lookup(ARRAY['default'], ARRAY['{key}'], "
            "ARRAY['default'])"
        )
    ).scalar()
    return list(
        plan_nodes((document if isinstance(document, list) else json.loads(document))[0]["Plan"])
    )


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_workers_plans_are_made_again_on_the_same_connection(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery worker keeps PostgreSQL's plan cache (planning its claim costs
    more than running it), where a generic plan made while a table was small
    outlives the table's growth; so a connection checked out ``REPLAN_SECONDS``
    after its plans were made drops them, and its next run plans for the table
    as it is. The connection is kept (replacing the pool's connections, which
    all age together, stalled the worker's cycles). The API plans every execution."""
    async with kit.db.read() as conn:
        assert (await conn.execute(text("SHOW plan_cache_mode"))).scalar() == "force_custom_plan"
    monkeypatch.setattr(database, "REPLAN_SECONDS", 3600)
    worker = open_database(kit.db.url, worker=True, pool_size=1)
    try:
        async with worker.read() as conn:
            assert (await conn.execute(text("SHOW plan_cache_mode"))).scalar() == "auto"
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
            await _prepare_lookup_while_small(conn)
        async with kit.db.write() as grow:
            await grow.execute(text(_GROW_POSTGRES[-1]), {"rows": ROWS})
        async with worker.read() as conn:
            kept = await _lookup_plan(conn, "grown-7")
        assert postgres_scans(kept), f"the generic plan was not kept: {describe(kept)}"
        monkeypatch.setattr(database, "REPLAN_SECONDS", 0)
        async with worker.read() as conn:
            again = await _lookup_plan(conn, "grown-8")
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() == pid
        assert not postgres_scans(again), describe(again)
        assert any(n.get("Index Name") == "pk_idempotency_keys" for n in again), describe(again)
    finally:
        await worker.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_worker_connection_lost_before_its_plans_are_dropped_is_replaced(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping the plans is the first thing a connection does when taken from
    the pool; if the server has closed it meanwhile, the pool opens another
    instead of handing the failure to the worker's statement."""
    monkeypatch.setattr(database, "REPLAN_SECONDS", 3600)
    worker = open_database(kit.db.url, worker=True, pool_size=1)
    try:
        async with worker.read() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        async with kit.db.read() as conn:
            stopped = await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            assert stopped.scalar() is True
        monkeypatch.setattr(database, "REPLAN_SECONDS", 0)
        async with worker.read() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() != pid
    finally:
        await worker.dispose()
