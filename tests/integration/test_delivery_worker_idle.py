"""A worker whose only due deliveries cannot be claimed (their subscription is
paused) waits for a wake-up or its poll interval; it does not spin on the
database. The rule is the worker's, not the dialect's: SQLite only, to stay fast."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from app.metrics import Metrics
from app.store import deliveries as delivery_store
from app.store.work import ClaimRequest, Completion, Work
from app.worker.worker import DeliveryWorker, WorkerConfig
from tests.integration.conftest import DeliveryKit

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

POLL_SECONDS = 0.2
WATCH_SECONDS = 1.0


async def test_held_deliveries_do_not_make_the_worker_spin(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = await kit.subscription()
    await kit.events(("t", "k"), ("t", None))
    await kit.set_subscription(sub.id, status="paused")

    calls: list[datetime] = []
    real_cycle = delivery_store.complete_and_claim

    async def counting_cycle(
        db: Any, completions: Sequence[Completion], *args: Any, **kwargs: Any
    ) -> list[Work]:
        request: ClaimRequest | None = args[1] if len(args) > 1 else kwargs.get("request")
        if request is not None:
            calls.append(request.now)
        return await real_cycle(db, completions, *args, **kwargs)

    monkeypatch.setattr(delivery_store, "complete_and_claim", counting_cycle)
    config = WorkerConfig(
        retry_schedule=(1.0,),
        timeout_ms=1000,
        allow_private_targets=True,
        poll_seconds=POLL_SECONDS,
    )
    worker = DeliveryWorker(kit.db, config, Metrics())
    await worker.start()
    try:
        await asyncio.sleep(WATCH_SECONDS)
    finally:
        await worker.stop()

    assert calls, "the worker did try to claim"
    assert len(calls) <= WATCH_SECONDS / POLL_SECONDS + 3, (
        f"{len(calls)} claim rounds in {WATCH_SECONDS} s with nothing claimable"
    )
    assert await kit.claim() == [], "still held"
