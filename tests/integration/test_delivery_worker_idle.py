"""A worker whose only due deliveries cannot be claimed (their subscription is
paused) waits for a wake-up or its poll interval; it does not spin on the
database. One that falls due while a cycle is at the database is claimed at
once, not at the next poll. The rules are the worker's, not the dialect's:
SQLite only, to stay fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
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


def _worker(kit: DeliveryKit, poll_seconds: float, retry_seconds: float) -> DeliveryWorker:
    config = WorkerConfig(
        retry_schedule=(retry_seconds,),
        timeout_ms=1000,
        allow_private_targets=True,
        poll_seconds=poll_seconds,
    )
    return DeliveryWorker(kit.db, config, Metrics())


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
    worker = _worker(kit, POLL_SECONDS, retry_seconds=1.0)
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


RARE_POLL_SECONDS = 30.0
SLOW_CYCLE_SECONDS = 0.3  # how long the worker's first cycle takes here


async def test_a_retry_that_falls_due_during_a_slow_cycle_is_claimed_at_once(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry falls due while the worker's cycle is still at the database (a
    slow commit): the cycle's claim was too early for it, and the worker must
    not take it for held and sleep until its poll."""
    await kit.subscription()
    await kit.events(("t", "k"))
    (first,) = await kit.claim()
    retry_at = datetime.now(UTC) + timedelta(seconds=SLOW_CYCLE_SECONDS / 2)
    await kit.finish(first, "pending", next_attempt_at=retry_at)

    claimed: list[tuple[float, list[int]]] = []
    real_cycle = delivery_store.complete_and_claim

    async def slow_first_cycle(
        db: Any, completions: Sequence[Completion], *args: Any, **kwargs: Any
    ) -> list[Work]:
        work = await real_cycle(db, completions, *args, **kwargs)
        claimed.append((time.monotonic(), [w.delivery.seq for w in work]))
        if len(claimed) == 1:
            await asyncio.sleep(SLOW_CYCLE_SECONDS)
        return work

    monkeypatch.setattr(delivery_store, "complete_and_claim", slow_first_cycle)
    worker = _worker(kit, RARE_POLL_SECONDS, retry_seconds=60.0)
    started = time.monotonic()
    await worker.start()
    try:
        deadline = started + 5.0
        while not any(first.seq in seqs for _, seqs in claimed) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await worker.stop()

    assert claimed, "the worker did claim"
    assert claimed[0][1] == [], "the first cycle came before the retry was due"
    at = next((at for at, seqs in claimed if first.seq in seqs), None)
    assert at is not None, f"no claim took the retry in 5 s (polling every {RARE_POLL_SECONDS} s)"
    assert at - started < SLOW_CYCLE_SECONDS + 1.0, f"claimed {at - started:.2f} s after the start"
