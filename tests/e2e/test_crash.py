"""Durability: SIGKILL the server mid-stream, restart it on the same database,
and find every event that was answered 202.

Sixteen clients post unique events with unique Idempotency-Keys until the
server dies under them. After each restart every acknowledged event must be
readable with its delivery row (a paused subscription matches every event, so
the row is created at ingest and never sent) and its key must replay the same
ID; requests whose answer was lost are sent again and must come out as
exactly one event each.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerFactory, ServerProcess

CLIENTS = 16
CYCLES = 3
KILL_AFTER_ACKS = (10, 100)  # a random number of 202s in this range, then a random instant
KILL_JITTER_SECONDS = 0.05
LOAD_DEADLINE_SECONDS = 15.0
VERIFY_CONCURRENCY = 16

pytestmark = pytest.mark.timeout(120)


@dataclass
class Ledger:
    """What the clients know: keys answered 202, and keys whose answer was lost."""

    acked: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    unknown: dict[str, dict[str, Any]] = field(default_factory=dict)
    bad_answers: list[str] = field(default_factory=list)


def event_body(cycle: int, worker: int, n: int) -> dict[str, Any]:
    return {
        "type": "crash.test",
        "key": f"worker-{worker}",
        "data": {"cycle": cycle, "worker": worker, "n": n, "pad": "x" * (n % 7) * 50},
    }


def add_paused_subscription(server: ServerProcess) -> None:
    with server.client() as client:
        created = client.post(
            "/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/never-called", "event_types": ["crash.*"]},
        )
        assert created.status_code == 201, created.text
        paused = client.patch(
            f"/v1/subscriptions/{created.json()['id']}", json={"status": "paused"}
        )
        assert paused.status_code == 200, paused.text
        assert paused.json()["status"] == "paused"


async def load_until_killed(
    server: ServerProcess, ledger: Ledger, cycle: int, rng: random.Random
) -> int:
    """Post from every client until the server is SIGKILLed; return the 202s of this cycle."""
    acks = 0
    kill_after = rng.randint(*KILL_AFTER_ACKS)

    async def client_loop(worker: int) -> None:
        nonlocal acks
        async with server.async_client(timeout=10.0) as client:
            for n in range(1_000_000):
                key = f"crash-{cycle}-{worker}-{n}"
                body = event_body(cycle, worker, n)
                try:
                    answer = await client.post(
                        "/v1/events", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:
                    ledger.unknown[key] = body
                    return
                if answer.status_code != 202:
                    ledger.bad_answers.append(f"{key}: {answer.status_code} {answer.text[:200]}")
                    return
                accepted = answer.json()
                if accepted["deliveries"] != 1:
                    ledger.bad_answers.append(f"{key}: {accepted}")
                    return
                ledger.acked[key] = (body, accepted["id"])
                acks += 1

    async def killer() -> None:
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        while acks < kill_after and time.monotonic() < deadline and server.running:
            await asyncio.sleep(0.005)
        await asyncio.sleep(rng.uniform(0, KILL_JITTER_SECONDS))
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)

    await asyncio.wait_for(
        asyncio.gather(killer(), *(client_loop(w) for w in range(CLIENTS))),
        timeout=LOAD_DEADLINE_SECONDS + 10,
    )
    await asyncio.to_thread(server.kill)  # reap it
    assert server.process is not None
    assert server.process.returncode == -signal.SIGKILL, "the server died before it was killed"
    return acks


async def verify(server: ServerProcess, ledger: Ledger, keys: list[str]) -> None:
    """Every acknowledged key among ``keys`` is stored and replays; lost answers resolve."""
    limit = asyncio.Semaphore(VERIFY_CONCURRENCY)
    missing: list[str] = []

    async def check_acked(client: httpx.AsyncClient, key: str) -> None:
        body, event_id = ledger.acked[key]
        async with limit:
            stored = await client.get(f"/v1/events/{event_id}")
            if stored.status_code != 200:
                missing.append(f"{key} -> {event_id}: GET {stored.status_code}")
                return
            event = stored.json()
            assert (event["type"], event["key"], event["data"]) == (
                body["type"],
                body["key"],
                body["data"],
            )
            assert [d["status"] for d in event["deliveries"]] == ["pending"], event
            replay = await client.post("/v1/events", json=body, headers={"Idempotency-Key": key})
            assert replay.status_code == 202, replay.text
            assert replay.headers.get("idempotent-replayed") == "true", key
            assert replay.json()["id"] == event_id

    async def resolve_unknown(client: httpx.AsyncClient, key: str) -> None:
        body = ledger.unknown.pop(key)
        async with limit:
            answer = await client.post("/v1/events", json=body, headers={"Idempotency-Key": key})
        assert answer.status_code == 202, answer.text
        ledger.acked[key] = (body, answer.json()["id"])

    async with server.async_client() as client:
        await asyncio.gather(*(resolve_unknown(client, k) for k in list(ledger.unknown)))
        await asyncio.gather(*(check_acked(client, k) for k in keys))
        assert not missing, f"{len(missing)} acknowledged events were lost: {missing[:10]}"
        # Every key ever sent now names exactly one event: none lost, none doubled.
        assert await stored_ids(client) == {event_id for _, event_id in ledger.acked.values()}


async def stored_ids(client: httpx.AsyncClient) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/events", params=params)).json()
        ids.update(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_sigkill_loses_no_acknowledged_event(
    server_factory: ServerFactory, database_url: str
) -> None:
    seed = random.randrange(2**32)
    print(f"crash test seed: {seed}")
    rng = random.Random(seed)
    server = server_factory(database_url)
    await asyncio.to_thread(add_paused_subscription, server)
    ledger = Ledger()
    for cycle in range(CYCLES):
        started = time.monotonic()
        acked_before = set(ledger.acked)
        acks = await load_until_killed(server, ledger, cycle, rng)
        loaded = time.monotonic()
        unanswered = len(ledger.unknown)
        assert not ledger.bad_answers, ledger.bad_answers[:10]
        assert acks > 0, "no request was acknowledged before the kill"
        await asyncio.to_thread(server.start)  # same database
        restarted = time.monotonic()
        await verify(server, ledger, [k for k in ledger.acked if k not in acked_before])
        print(
            f"cycle {cycle}: {acks} acknowledged, {unanswered} unanswered; "
            f"load {loaded - started:.1f} s, restart {restarted - loaded:.1f} s, "
            f"verify {time.monotonic() - restarted:.1f} s"
        )
    assert len(ledger.acked) >= CYCLES * KILL_AFTER_ACKS[0]
