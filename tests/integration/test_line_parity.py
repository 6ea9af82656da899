"""The delivery-line rules give the same answers on SQLite and PostgreSQL.

Each rule is written once (``app/store/lines.py``), but its statements run in
two dialects, and on SQLite the ingest flush and the worker's cycle run them on
the writer's own thread. One scenario runs on both databases side by side —
ingest, claims, every kind of outcome, redrive, discard, replay, a loosened
dead-letter rule — and after every step the two must agree on every
delivery's status and ``ready`` mark (in ``seq`` order per line), on which
lines are busy, and on what the next claim takes.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.domain.subscriptions import SubscriptionPatch
from app.services.subscriptions import SubscriptionService
from app.store import dlq, schema
from app.store.database import open_database
from app.store.lines import busy_lines
from tests.conftest import _pg_admin, pg_url
from tests.integration.conftest import DeliveryKit

Snapshot = list[tuple[str, str, int, str, bool]]
KEYS = ("k1", "k2", "k3")


@pytest.fixture
async def kits(
    sqlite_template: Path, postgres_template: str, tmp_path: Path
) -> AsyncIterator[tuple[DeliveryKit, DeliveryKit]]:
    path = tmp_path / "parity.db"
    shutil.copyfile(sqlite_template, path)
    name = f"er_test_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    lite = open_database(f"sqlite+aiosqlite:///{path}")
    pg = open_database(pg_url(name))
    try:
        yield DeliveryKit(lite), DeliveryKit(pg)
    finally:
        await lite.dispose()
        await pg.dispose()
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Side:
    """One database's run of the scenario, with names instead of generated IDs."""

    def __init__(self, kit: DeliveryKit) -> None:
        self.kit = kit
        self.subs: dict[str, str] = {}  # scenario name -> subscription ID

    def name_of(self, subscription_id: str) -> str:
        return next(n for n, i in self.subs.items() if i == subscription_id)

    async def snapshot(self) -> Snapshot:
        """Every delivery as (subscription, key, position in its line, status, ready)."""
        d = schema.deliveries
        async with self.kit.db.read() as conn:
            rows = list(
                await conn.execute(
                    select(d.c.subscription_id, d.c.ordering_key, d.c.status, d.c.ready).order_by(
                        d.c.seq
                    )
                )
            )
        positions: dict[tuple[str, str], int] = {}
        found: Snapshot = []
        for sub, key, status, ready in rows:
            line = (self.name_of(sub), key or "-")
            positions[line] = positions.get(line, 0) + 1
            found.append((*line, positions[line], status, bool(ready)))
        return sorted(found)

    async def busy(self) -> set[tuple[str, str]]:
        lines = [(sub, key) for sub in self.subs.values() for key in KEYS]
        async with self.kit.db.read() as conn:
            busy = await busy_lines(conn, lines)
        return {(self.name_of(sub), key) for sub, key in busy}

    async def claim_and_finish(self, statuses: list[str]) -> list[tuple[str, str]]:
        """Claim what is claimable and finish each with the next status (cycling)."""
        claimed = sorted(await self.kit.claim(limit=100), key=lambda c: c.seq)
        for n, one in enumerate(claimed):
            status = statuses[n % len(statuses)]
            later = datetime.now(UTC) + timedelta(hours=1)
            await self.kit.finish(one, status, next_attempt_at=later)
        return [(self.name_of(c.subscription_id), c.ordering_key or "-") for c in claimed]


async def _both(sides: tuple[Side, Side], step: Callable[[Side], Awaitable[object]]) -> None:
    answers = [await step(side) for side in sides]
    assert answers[0] == answers[1], f"the step's answers differ: {answers}"
    snapshots = [await side.snapshot() for side in sides]
    assert snapshots[0] == snapshots[1], "the deliveries differ after the step"
    busy = [await side.busy() for side in sides]
    assert busy[0] == busy[1], f"busy lines differ: {busy}"


async def test_every_line_rule_agrees_on_both_databases(
    kits: tuple[DeliveryKit, DeliveryKit],
) -> None:
    sides = (Side(kits[0]), Side(kits[1]))

    async def subscribe(side: Side) -> None:
        for name, rule in (("block", "block"), ("skip", "skip")):
            sub = await side.kit.subscription(ordering="key", on_dead_letter=rule)
            side.subs[name] = sub.id
        side.subs["none"] = (await side.kit.subscription(ordering="none")).id

    async def ingest(side: Side) -> None:
        specs = [("order.created", KEYS[n % 3]) for n in range(9)]
        await side.kit.events(*specs[:4])  # a transaction each
        await side.kit.events(*specs[4:], together=True)  # one flush

    async def first_heads_fail(side: Side) -> list[tuple[str, str]]:
        return await side.claim_and_finish(["dead", "pending", "succeeded"])

    async def next_heads(side: Side) -> list[tuple[str, str]]:
        return await side.claim_and_finish(["succeeded", "dead"])

    async def redrive_one(side: Side) -> int:
        d = schema.deliveries
        async with side.kit.db.read() as conn:
            first = (
                await conn.execute(
                    select(d.c.id).where(d.c.status == "dead").order_by(d.c.seq).limit(1)
                )
            ).scalar_one()
        async with side.kit.db.write() as conn:
            return int(await dlq.redrive(conn, "default", first, datetime.now(UTC)))

    async def discard_the_rest(side: Side) -> int:
        d = schema.deliveries
        async with side.kit.db.read() as conn:
            dead = [r[0] for r in await conn.execute(select(d.c.id).where(d.c.status == "dead"))]
        async with side.kit.db.write() as conn:
            return sum([await dlq.discard(conn, "default", i, datetime.now(UTC)) for i in dead])

    async def replay_all(side: Side) -> int:
        service = SubscriptionService(side.kit.db, allow_private_targets=True)
        return await service.replay(
            "default", side.subs["block"], datetime.now(UTC) - timedelta(hours=1), None
        )

    async def loosen_block(side: Side) -> None:
        service = SubscriptionService(side.kit.db, allow_private_targets=True)
        await service.patch("default", side.subs["block"], SubscriptionPatch(on_dead_letter="skip"))

    await _both(sides, subscribe)
    await _both(sides, ingest)
    await _both(sides, first_heads_fail)
    await _both(sides, next_heads)
    await _both(sides, first_heads_fail)
    await _both(sides, redrive_one)
    await _both(sides, next_heads)
    await _both(sides, replay_all)
    await _both(sides, first_heads_fail)
    await _both(sides, loosen_block)
    await _both(sides, next_heads)
    await _both(sides, discard_the_rest)
    await _both(sides, next_heads)
    final = await sides[0].snapshot()
    assert {status for *_, status, _ in final} >= {"succeeded", "discarded"}, final
