"""Stats, health, readiness and metrics on a working database."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.settings import Settings
from app.store.migrations import head_revision
from tests.integration.support import assert_problem, running

NO_DELIVERIES = {"pending": 0, "in_flight": 0, "succeeded": 0, "dead": 0, "discarded": 0}


async def test_stats_count_events_exactly(client: httpx.AsyncClient) -> None:
    empty = await client.get("/v1/stats")
    assert empty.status_code == 200
    assert empty.json() == {"events": 0, "subscriptions": 0, "deliveries": NO_DELIVERIES}
    for n in range(3):
        await client.post("/v1/events", json={"type": "t"}, headers={"Idempotency-Key": f"k{n}"})
    await client.post("/v1/events", json={"type": "t"}, headers={"Idempotency-Key": "k0"})
    await client.post("/v1/events", json={"type": "bad type"}, headers={"Idempotency-Key": "x"})
    batch = [{"idempotency_key": f"b{n}", "type": "t"} for n in range(4)]
    await client.post("/v1/events/batch", json={"events": batch})
    await client.post("/v1/events/batch", json={"events": [*batch, {"type": "bad type"}]})
    response = await client.get("/v1/stats")
    assert response.json() == {"events": 7, "subscriptions": 0, "deliveries": NO_DELIVERIES}


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    alive = await client.get("/healthz", headers={"Authorization": ""})
    assert alive.status_code == 200
    assert alive.json() == {"status": "ok"}
    response = await client.get("/readyz", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "migration": head_revision()}
    assert head_revision() is not None


async def test_readyz_is_503_before_migrations(tmp_path: Path) -> None:
    unmigrated = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/empty.db", admin_token="x", log_format="text"
    )
    async with running(unmigrated) as client:
        response = await client.get("/readyz")
    assert_problem(response, 503)


async def test_metrics_count_ingests_and_replays(client: httpx.AsyncClient) -> None:
    for key in ("a", "b", "a"):
        await client.post("/v1/events", json={"type": "t"}, headers={"Idempotency-Key": key})
    response = await client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200
    samples = dict(
        line.rsplit(" ", 1) for line in response.text.splitlines() if line and line[0] != "#"
    )
    assert float(samples["eventrelay_events_ingested_total"]) == 2
    assert float(samples["eventrelay_idempotent_replays_total"]) == 1
