"""Several workers on one database: no delivery is held by two of them, and per-key
order survives workers racing each other (PostgreSQL concurrently; SQLite, which
has one worker process at a time, in turns)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator

import pytest

from app.store.database import Database, open_database
from app.store.work import Claimed
from tests.integration.conftest import DeliveryKit

WORKERS = ("worker-a", "worker-b", "worker-c", "worker-d")


@pytest.fixture
async def databases(database_url: str) -> AsyncIterator[list[Database]]:
    """One Database (its own pool) per worker, as separate processes would have."""
    opened = [open_database(database_url) for _ in WORKERS]
    try:
        yield opened
    finally:
        for database in opened:
            await database.dispose()


async def _claim_round(
    kit: DeliveryKit, databases: list[Database], concurrent: bool, limit: int
) -> dict[str, list[Claimed]]:
    if concurrent:
        results = await asyncio.gather(
            *(
                kit.claim(owner, limit=limit, db=database)
                for owner, database in zip(WORKERS, databases, strict=True)
            )
        )
    else:
        results = [
            await kit.claim(owner, limit=limit, db=database)
            for owner, database in zip(WORKERS, databases, strict=True)
        ]
    return dict(zip(WORKERS, results, strict=True))


async def test_no_delivery_is_claimed_twice(
    kit: DeliveryKit, databases: list[Database], backend: str
) -> None:
    subs = [await kit.subscription(ordering="none"), await kit.subscription()]
    events = await kit.events(*[("t", None) for _ in range(150)], together=True)
    expected = {(s.id, e.id) for s in subs for e in events}
    concurrent = backend == "postgres"

    seen: Counter[str] = Counter()
    owners: dict[str, str] = {}
    for _ in range(100):
        round_ = await _claim_round(kit, databases, concurrent, limit=13)
        ids = [c.id for claimed in round_.values() for c in claimed]
        assert len(ids) == len(set(ids)), "two workers claimed the same delivery in one round"
        seen.update(ids)
        owners.update({c.id: owner for owner, claimed in round_.items() for c in claimed})
        if not ids:
            break

    assert len(seen) == len(expected)
    assert set(seen.values()) == {1}, "a delivery was claimed more than once"
    for delivery_id, owner in list(owners.items())[::17]:
        row = await kit.delivery(delivery_id)
        assert (row["status"], row["lease_owner"]) == ("in_flight", owner)
    if concurrent:
        assert len(set(owners.values())) > 1, "the workers did share the work"


async def test_workers_racing_keep_every_key_in_order(
    kit: DeliveryKit, databases: list[Database], backend: str
) -> None:
    """Workers claim and complete in loops; per line, deliveries go out one at a time
    and in ingest order."""
    await kit.subscription()
    keys = [f"k{i}" for i in range(12)]
    events = await kit.events(*[("t", k) for _ in range(5) for k in keys], together=True)
    position = {e.id: i for i, e in enumerate(events)}

    sent: dict[str | None, list[int]] = defaultdict(list)
    out: dict[str | None, str] = {}

    async def step(owner: str, database: Database) -> int:
        claimed = await kit.claim(owner, limit=4, db=database)
        for c in claimed:
            assert c.ordering_key not in out, f"{c.ordering_key}: two deliveries out at once"
            out[c.ordering_key] = c.id
            sent[c.ordering_key].append(position[c.event_id])
        for c in claimed:
            del out[c.ordering_key]  # before the commit that frees the next one
            await kit.finish(c, "succeeded", owner=owner, db=database)
        return len(claimed)

    async def work(owner: str, database: Database) -> None:
        idle = 0
        while idle < 3:
            if await step(owner, database):
                idle = 0
            else:
                idle += 1
                await asyncio.sleep(0.01)

    pairs = list(zip(WORKERS, databases, strict=True))
    if backend == "postgres":
        await asyncio.gather(*(work(owner, database) for owner, database in pairs))
    else:
        while sum([await step(owner, database) for owner, database in pairs]):
            pass

    assert set(sent) == set(keys)
    for key in keys:
        assert len(sent[key]) == 5, key
        assert sent[key] == sorted(sent[key]), key
