"""How many finished outcomes one worker cycle writes: on SQLite at most
``OUTCOMES_PER_CYCLE`` (the cycle's transaction holds the one writer, and
ingest waits for it), the rest in the next cycle; on PostgreSQL every outcome
finished by then, so that a busy worker's outcomes do not fall behind."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from app.metrics import Metrics
from app.store import deliveries as delivery_store
from app.store.work import Completion, Work
from app.worker.config import WorkerConfig
from app.worker.worker import OUTCOMES_PER_CYCLE, DeliveryWorker
from tests.e2e.receivers import wait_until
from tests.integration.conftest import DeliveryKit
from tests.unit.worker_fakes import FakeSender

# More deliveries than one SQLite cycle writes, all in flight at once.
DELIVERIES = OUTCOMES_PER_CYCLE + 44
DEADLINE = 30.0


async def test_a_cycle_writes_at_most_the_cap_on_sqlite_and_everything_on_postgres(
    kit: DeliveryKit, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []  # the outcomes each cycle wrote
    real_cycle = delivery_store.complete_and_claim

    async def recording_cycle(
        db: Any, completions: Sequence[Completion], *args: Any, **kwargs: Any
    ) -> list[Work]:
        if completions:
            written.append(len(completions))
        return await real_cycle(db, completions, *args, **kwargs)

    monkeypatch.setattr(delivery_store, "complete_and_claim", recording_cycle)
    await kit.subscription(ordering="none", max_in_flight=1000)
    await kit.events(*[("t", None)] * DELIVERIES, together=True)
    sender = FakeSender(gate=asyncio.Event())
    config = WorkerConfig(
        retry_schedule=(60.0,),
        timeout_ms=10_000,
        allow_private_targets=True,
        concurrency=1000,
        grace_seconds=0.2,
    )
    worker = DeliveryWorker(kit.db, config, Metrics(), senders=lambda: sender)
    await worker.start()
    try:
        # Every delivery in flight, then all of them finishing together.
        await wait_until(
            lambda: len(sender.sent) == DELIVERIES,
            DEADLINE,
            message=lambda: f"all in flight: {len(sender.sent)}",
        )
        assert written == []
        sender.gate.set()

        async def delivered() -> bool:
            return await kit.statuses() == {"succeeded": DELIVERIES}

        await wait_until(delivered, DEADLINE, message=lambda: f"outcomes written: {written}")
    finally:
        await worker.stop()

    assert sum(written) == DELIVERIES
    if backend == "sqlite":
        assert max(written) == OUTCOMES_PER_CYCLE, written
    else:
        assert max(written) > OUTCOMES_PER_CYCLE, written
