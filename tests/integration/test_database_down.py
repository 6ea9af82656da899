"""With the database unreachable, ingest is 503 (never 202) and readiness fails."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.support import assert_problem, running


@pytest.fixture(params=["postgres-port-closed", "sqlite-no-directory"])
async def unreachable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    # Port 1 (tcpmux) has no listener here; the SQLite file's directory does not exist.
    urls = {
        "postgres-port-closed": "postgresql+asyncpg://postgres@127.0.0.1:1/eventrelay",
        "sqlite-no-directory": f"sqlite+aiosqlite:///{tmp_path}/missing/eventrelay.db",
    }
    before = set(threading.enumerate())
    yield Settings(database_url=urls[request.param], admin_token=ADMIN_TOKEN, log_format="text")
    await threads_ended(before)


async def threads_ended(before: set[threading.Thread], within: float = 5.0) -> None:
    """Wait (on the test's loop) until the threads started since ``before`` end.
    aiosqlite stops the thread of a connection that failed to open without
    waiting for it, and that thread then answers on the loop: were the loop
    closed first, the answer would raise in the thread."""
    deadline = time.monotonic() + within
    while any(t.is_alive() for t in set(threading.enumerate()) - before):
        assert time.monotonic() < deadline, "a driver thread did not end"
        await asyncio.sleep(0.01)


async def post_event(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/v1/events", json={"type": "t"}, headers={"Idempotency-Key": "k"})


async def test_ingest_is_503(unreachable: Settings) -> None:
    async with running(unreachable) as client:
        for _ in range(2):  # also once the first failure has been seen
            response = await post_event(client)
            body = assert_problem(response, 503)
            assert response.headers["retry-after"].isdigit()
            assert "Traceback" not in body["detail"]
        batch = await client.post(
            "/v1/events/batch", json={"events": [{"idempotency_key": "b", "type": "t"}]}
        )
        assert_problem(batch, 503)


async def test_reads_are_503(unreachable: Settings) -> None:
    async with running(unreachable) as client:
        for path in ("/v1/stats", "/v1/events", "/v1/events/evt_01JD0000000000000000000000"):
            assert_problem(await client.get(path), 503)


async def test_readiness_fails_but_liveness_holds(unreachable: Settings) -> None:
    async with running(unreachable) as client:
        assert_problem(await client.get("/readyz"), 503)
        assert (await client.get("/healthz")).status_code == 200
