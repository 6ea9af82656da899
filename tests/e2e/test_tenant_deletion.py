"""Deleting a tenant: hidden at once, removed in the background, and a removal
cut short by SIGKILL resumes when the server starts again (both databases)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from app.store import schema
from app.store.database import open_database
from tests.e2e.conftest import ServerFactory, assert_problem

pytestmark = pytest.mark.timeout(240)

DOOMED = "doomed"
BATCHES = 16
BATCH = 500
DEADLINE_SECONDS = 90.0


async def _doomed_rows(database_url: str) -> dict[str, int]:
    db = open_database(database_url)
    try:
        async with db.read() as conn:
            counts = {}
            for table in (schema.events, schema.deliveries, schema.idempotency_keys):
                query = select(func.count()).select_from(table)
                counts[table.name] = int(
                    (await conn.execute(query.where(table.c.tenant_id == DOOMED))).scalar_one()
                )
            t = schema.tenants
            query = select(func.count()).select_from(t).where(t.c.id == DOOMED)
            counts["tenants"] = int((await conn.execute(query)).scalar_one())
            return counts
    finally:
        await db.dispose()


def _events(prefix: str, n: int) -> dict[str, Any]:
    return {
        "events": [
            {"idempotency_key": f"{prefix}-{i}", "type": "doomed.thing", "data": {"i": i}}
            for i in range(n)
        ]
    }


async def test_a_removal_cut_short_by_sigkill_resumes(
    database_url: str, server_factory: ServerFactory
) -> None:
    server = server_factory(database_url)
    header = {"Eventrelay-Tenant": DOOMED}
    with server.client() as client:
        assert client.post("/v1/tenants", json={"id": DOOMED, "name": "d"}).status_code == 201
        created = client.post(
            "/v1/subscriptions", json={"url": "http://127.0.0.1:9/never"}, headers=header
        )
        assert created.status_code == 201, created.text
        sub = created.json()["id"]
        paused = client.patch(f"/v1/subscriptions/{sub}", json={"status": "paused"}, headers=header)
        assert paused.status_code == 200, paused.text
        for b in range(BATCHES):
            answer = client.post("/v1/events/batch", json=_events(f"b{b}", BATCH), headers=header)
            assert answer.status_code == 200, answer.text
        kept = client.post(
            "/v1/events", json={"type": "kept.thing"}, headers={"Idempotency-Key": "kept"}
        )
        assert kept.status_code == 202
        before = await _doomed_rows(database_url)
        assert before["events"] == BATCHES * BATCH
        assert before["deliveries"] == BATCHES * BATCH

        assert client.delete(f"/v1/tenants/{DOOMED}").status_code == 202
        assert_problem(client.get(f"/v1/subscriptions/{sub}", headers=header), 404)
    # Kill the server while it removes: once some rows are gone, or at once.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if (await _doomed_rows(database_url))["events"] < before["events"]:
            break
        await asyncio.sleep(0.02)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    await asyncio.to_thread(server.kill)
    cut_short = await _doomed_rows(database_url)
    assert cut_short["events"] > 0, "the removal finished before the kill; nothing to resume"
    assert cut_short["tenants"] == 1

    await asyncio.to_thread(server.start)
    with server.client() as client:
        # While the removal runs the ID is taken; the rest of the installation works.
        taken = client.post("/v1/tenants", json={"id": DOOMED, "name": "again"})
        assert taken.status_code in (201, 409)
        if taken.status_code == 409:
            deadline = time.monotonic() + DEADLINE_SECONDS
            while (await _doomed_rows(database_url))["tenants"] and time.monotonic() < deadline:
                ingest = client.post(
                    "/v1/events",
                    json={"type": "kept.thing"},
                    headers={"Idempotency-Key": f"during-{time.monotonic()}"},
                )
                assert ingest.status_code == 202
                await asyncio.sleep(0.1)
            assert (await _doomed_rows(database_url)) == dict.fromkeys(before, 0)
            again = client.post("/v1/tenants", json={"id": DOOMED, "name": "again"})
            assert again.status_code == 201, again.text
        assert (await _doomed_rows(database_url))["events"] == 0
        stats = client.get("/v1/stats", headers=header).json()
        assert stats["events"] == 0
        assert stats["subscriptions"] == 0
        replay = client.post(
            "/v1/events", json={"type": "kept.thing"}, headers={"Idempotency-Key": "kept"}
        )
        assert replay.json()["id"] == kept.json()["id"]
    assert "deleted tenant removed" in server.stdout() + server.stderr()
