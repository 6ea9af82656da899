"""The console's statements stay index-served and bounded on grown tables.

Every statement the console's pages send is captured while each page is
requested — the overview, the event search in each of its ways (from the
few deliveries in a status, walking the events with a bound, by time), the
DLQ with its capped counts, the subscriptions' health — and planned again as
``tests/integration/test_hot_plans.py`` does: PostgreSQL with statistics
left from before the tables grew, generic and custom plans; SQLite with no
statistics. No plan may read a growing table whole, and on PostgreSQL every
count the pages show stops at its cap (a ``Limit`` in its plan).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text

from app.store import events as events_store
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import DeliveryKit
from tests.integration.plans import (
    Statement,
    captured_statements,
    describe,
    distinct,
    postgres_plan,
    postgres_scans,
    sqlite_plan,
    sqlite_scans,
)
from tests.integration.test_hot_plans import _GROW_POSTGRES, ROWS


async def _console_pages(client: httpx.AsyncClient, kit: DeliveryKit) -> list[Statement]:
    """Every console page that reads a growing table, once each."""
    sub = await kit.subscription(url="http://127.0.0.1:9/console")
    events = await kit.events(("order.created", "k1"), ("order.paid", "k2"))
    (dead,) = await kit.claim(limit=1)
    await kit.finish(dead, "dead")
    since = quote((datetime.now(UTC) - timedelta(hours=1)).isoformat())
    until = quote((datetime.now(UTC) - timedelta(days=1)).isoformat())
    signed = await client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
    assert signed.status_code == 303, signed.text
    with captured_statements() as seen:
        for path in (
            "/console/",
            "/console/events",
            "/console/events?type=order.created",
            "/console/events?key=k1",
            f"/console/events?since={since}",
            f"/console/events?until={until}",
            "/console/events?status=dead",  # more than STATUS_CANDIDATES: a walk
            "/console/events?status=in_flight",  # none: from the deliveries
            f"/console/events?status=pending&since={since}",
            f"/console/events/{events[0].id}",
            "/console/subscriptions",
            f"/console/subscriptions/{sub.id}",
            "/console/dlq",
            f"/console/dlq?subscription_id={sub.id}",
            "/console/dlq?event_type=order.created",
            f"/console/dlq/{dead.id}",
        ):
            page = await client.get(path)
            assert page.status_code == 200, (path, page.text[:500])
    return distinct(seen)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("plan_mode", ["force_generic_plan", "force_custom_plan"])
async def test_no_console_statement_scans_a_grown_table_postgres(
    client: httpx.AsyncClient,
    kit: DeliveryKit,
    monkeypatch: pytest.MonkeyPatch,
    plan_mode: str,
) -> None:
    monkeypatch.setattr(events_store, "STATUS_CANDIDATES", 5)
    await kit.subscription(url="http://127.0.0.1:9/grown")
    async with kit.db.write() as conn:
        for statement in _GROW_POSTGRES:
            await conn.execute(text(statement), {"rows": ROWS})
    failures = []
    for sql, params in await _console_pages(client, kit):
        nodes = await postgres_plan(kit.db, sql, params, plan_mode)
        scans = postgres_scans(nodes)
        # Per-group counts are the gauges' (the process refreshes them in the
        # background, so they may be captured too); the console's stop at a cap.
        counts = "count(*)" in sql.lower() and "group by" not in sql.lower()
        uncapped = counts and not any(n["Node Type"] == "Limit" for n in nodes)
        if scans or uncapped:
            failures.append(f"scans {scans} or counts with no cap:\n{sql}\n{describe(nodes)}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_no_console_statement_scans_a_table_sqlite(
    client: httpx.AsyncClient,
    kit: DeliveryKit,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    monkeypatch.setattr(events_store, "STATUS_CANDIDATES", 0)
    statements = await _console_pages(client, kit)
    path = Path(database_url.split(":///", 1)[1])
    failures = []
    with sqlite3.connect(path) as conn:
        for sql, params in statements:
            steps = sqlite_plan(conn, sql, params)
            if sqlite_scans(sql, steps):
                failures.append(f"{sql}\n{steps}")
    assert not failures, "\n\n".join(failures)
