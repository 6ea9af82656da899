"""SIGTERM: the server finishes what it acknowledged, exits 0 within a bound,
and everything it answered 202 is there after a restart."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerFactory, ServerProcess

CLIENTS = 8
EXIT_BOUND_SECONDS = 15.0  # the CLI gives in-flight work 10 s
TERM_AFTER_ACKS = 40
LOAD_DEADLINE_SECONDS = 20.0
IDLE_EXIT_SECONDS = 5.0

pytestmark = pytest.mark.timeout(90)


async def load_then_terminate(
    server: ServerProcess,
) -> tuple[dict[str, tuple[dict[str, Any], str]], list[str], float]:
    """Post from several clients, SIGTERM mid-stream, keep posting until refused."""
    acked: dict[str, tuple[dict[str, Any], str]] = {}
    bad: list[str] = []
    terminated_at = 0.0

    async def client_loop(worker: int) -> None:
        async with server.async_client(timeout=EXIT_BOUND_SECONDS) as client:
            for n in range(1_000_000):
                key = f"term-{worker}-{n}"
                body = {"type": "sigterm.test", "key": f"w{worker}", "data": {"n": n}}
                try:
                    answer = await client.post(
                        "/v1/events", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:
                    return
                if answer.status_code != 202:
                    # Refusing new work while stopping is fine; failing it is not.
                    if answer.status_code >= 500 and answer.status_code != 503:
                        bad.append(f"{key}: {answer.status_code} {answer.text[:200]}")
                    return
                acked[key] = (body, answer.json()["id"])

    async def terminator() -> None:
        nonlocal terminated_at
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        while len(acked) < TERM_AFTER_ACKS and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        terminated_at = time.monotonic()
        server.send_signal(signal.SIGTERM)

    await asyncio.wait_for(
        asyncio.gather(terminator(), *(client_loop(w) for w in range(CLIENTS))),
        timeout=LOAD_DEADLINE_SECONDS + EXIT_BOUND_SECONDS,
    )
    return acked, bad, terminated_at


async def stored_events(client: httpx.AsyncClient) -> dict[str, Any]:
    """Every stored event's data by ID, read through the list endpoint."""
    found: dict[str, Any] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/events", params=params)).json()
        found.update((item["id"], item["data"]) for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def test_sigterm_exits_0_and_keeps_acknowledged_events(
    server_factory: ServerFactory, database_url: str
) -> None:
    server = server_factory(database_url)
    acked, bad, terminated_at = await load_then_terminate(server)
    assert server.process is not None
    code = await asyncio.to_thread(server.process.wait, EXIT_BOUND_SECONDS)
    took = time.monotonic() - terminated_at
    assert code == 0, server.log_tail()
    assert took < EXIT_BOUND_SECONDS
    assert "Finished server process" in server.stdout()
    assert not bad, bad[:10]
    assert len(acked) >= TERM_AFTER_ACKS

    await asyncio.to_thread(server.start)
    async with server.async_client() as client:
        stored = await stored_events(client)
        lost = [key for key, (_, event_id) in acked.items() if event_id not in stored]
        assert not lost, f"{len(lost)} acknowledged events are missing: {lost[:10]}"
        assert all(stored[event_id] == body["data"] for body, event_id in acked.values())
        some_key = next(iter(acked))
        replay = await client.post(
            "/v1/events", json=acked[some_key][0], headers={"Idempotency-Key": some_key}
        )
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["id"] == acked[some_key][1]

    # An idle server stops at once.
    started = time.monotonic()
    code = await asyncio.to_thread(server.terminate, EXIT_BOUND_SECONDS)
    assert code == 0, server.log_tail()
    assert time.monotonic() - started < IDLE_EXIT_SECONDS, "an idle server should stop at once"
