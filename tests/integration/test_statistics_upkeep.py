"""PostgreSQL statistics kept by eventrelay itself, not by autovacuum (which
the server may not run): a table that grew by more than a tenth since its last
analyze is analyzed within seconds, so that no plan goes on taking it for the
table it was. The case that showed it: a tenant that began sending after the
last analyze had each idempotency lookup walk all of that tenant's keys."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from app.store.database import Database, open_database
from app.store.retention import STALE_FLOOR, analyze_stale_tables

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

GROWN = 50_000  # a new tenant's keys since the last analyze
KEYS = """
    INSERT INTO idempotency_keys (tenant_id, key, fingerprint, event_id, response_status,
                                  response_body, created_at)
    SELECT :tenant, :prefix || n, 'f', 'evt_' || n, 202, '{}', now()
    FROM generate_series(1, :count) AS n
"""
LOOKUP = "SELECT * FROM idempotency_keys WHERE tenant_id = ANY(:tenants) AND key = ANY(:keys)"


async def _insert_and_disconnect(url: str, tenant: str, count: int) -> None:
    """Insert ``count`` keys on a connection of their own, closed afterwards: a
    backend reports its row changes to the statistics when it ends at the latest."""
    other = open_database(url)
    try:
        async with other.write() as conn:
            await conn.execute(text(KEYS), {"tenant": tenant, "prefix": tenant, "count": count})
    finally:
        await other.dispose()


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan] if "Scan" in plan["Node Type"] else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def _lookup_plan(db: Database) -> list[dict[str, Any]]:
    keys = [f"grown{n}" for n in range(1, 400, 4)]
    async with db.read() as conn:
        await conn.execute(text("SET plan_cache_mode = force_custom_plan"))
        explained = await conn.execute(
            text(f"EXPLAIN (FORMAT JSON) {LOOKUP}"), {"tenants": ["grown"], "keys": keys}
        )
        return _scans(explained.scalar()[0]["Plan"])


async def _stale_tables_once_reported(db: Database, seconds: float = 15.0) -> list[str]:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        analyzed = await analyze_stale_tables(db)
        if analyzed or asyncio.get_running_loop().time() > deadline:
            return analyzed
        await asyncio.sleep(0.1)


async def test_a_table_that_grew_since_its_last_analyze_is_analyzed(
    db: Database, database_url: str
) -> None:
    await _insert_and_disconnect(database_url, "default", 200)
    async with db.write() as conn:
        await conn.execute(text("ANALYZE"))  # every table small, the new tenant unknown
    assert await analyze_stale_tables(db) == []

    await _insert_and_disconnect(database_url, "grown", GROWN)
    assert await _stale_tables_once_reported(db) == ["idempotency_keys"]

    scans = await _lookup_plan(db)
    assert [s["Node Type"] for s in scans] in (["Index Scan"], ["Index Only Scan"]), scans
    (scan,) = scans
    assert "key" in scan["Index Cond"], f"the lookup walks the tenant's keys: {scan}"
    assert "Filter" not in scan, scan
    async with db.read() as conn:
        changed = await conn.execute(
            text(
                "SELECT n_mod_since_analyze FROM pg_stat_user_tables"
                " WHERE relname = 'idempotency_keys'"
            )
        )
        assert changed.scalar() < STALE_FLOOR
    assert await analyze_stale_tables(db) == [], "analyzed once, not at every check"


async def _reported(db: Database, column: str, at_least: int, seconds: float = 15.0) -> None:
    """Until the statistics show ``column`` of idempotency_keys at ``at_least``:
    a backend reports its changes as it ends, after its client has gone."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        async with db.read() as conn:
            value = await conn.execute(
                text(f"SELECT {column} FROM pg_stat_user_tables WHERE relname = 'idempotency_keys'")
            )
            if value.scalar() >= at_least:
                return
        assert asyncio.get_running_loop().time() < deadline, f"{column} never reached {at_least}"
        await asyncio.sleep(0.1)


async def test_a_table_whose_rows_only_changed_is_left_to_the_retention_pass(
    db: Database, database_url: str
) -> None:
    """Status changes do not make a table stale: analyzing the deliveries at every
    few thousand of them took a core from the worker and ingest every few seconds.
    The retention pass analyzes every table anyway."""
    await _insert_and_disconnect(database_url, "default", 5_000)
    await _reported(db, "n_live_tup", 5_000)
    async with db.write() as conn:
        await conn.execute(text("ANALYZE idempotency_keys"))
    other = open_database(database_url)
    try:
        async with other.write() as conn:
            await conn.execute(text("UPDATE idempotency_keys SET response_status = 200"))
    finally:
        await other.dispose()
    await _reported(db, "n_mod_since_analyze", 5_000)
    assert await analyze_stale_tables(db) == []
