"""Claiming ahead: for a healthy subscription the worker holds ``claim_ahead``
times ``max_in_flight`` deliveries more than it sends, starts the next as soon as an
attempt succeeds, never sends more than ``max_in_flight`` at once, and gives the
held ones back when the subscription fails or the worker stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from app.metrics import Metrics
from app.worker.worker import DeliveryWorker, WorkerConfig
from tests.e2e.receivers import Receipt, Receiver, reply, wait_until
from tests.integration.conftest import DeliveryKit

MAX_IN_FLIGHT = 2
CLAIM_AHEAD = 2
AHEAD = CLAIM_AHEAD * MAX_IN_FLIGHT
EVENTS = 10
DEADLINE = 10.0


class GatedReceiver:
    """Holds every request until its gate opens; the gate's status is the answer."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = [asyncio.Event()]
        self.status = 200
        self.receiver = Receiver(self._behave)

    async def _behave(self, receipt: Receipt) -> web.StreamResponse:
        gate = self.gates[-1]
        await gate.wait()
        return reply(self.status)

    def answer(self, status: int) -> None:
        """Answer the requests held now with ``status``; later ones wait again."""
        self.status = status
        opened = self.gates[-1]
        self.gates.append(asyncio.Event())
        opened.set()

    def open(self, status: int = 200) -> None:
        self.status = status
        self.gates.append(self.gates[-1])
        self.gates[-1].set()

    def max_concurrent(self) -> int:
        moments = sorted(
            [(r.at, 1) for r in self.receiver.receipts]
            + [(r.finished_at, -1) for r in self.receiver.receipts if r.finished_at is not None]
        )
        level = peak = 0
        for _, step in moments:
            level += step
            peak = max(peak, level)
        return peak


@pytest.fixture
async def gated() -> AsyncIterator[GatedReceiver]:
    gated = GatedReceiver()
    await gated.receiver.start()
    try:
        yield gated
    finally:
        gated.open()
        await gated.receiver.close()


@pytest.fixture
async def worker(kit: DeliveryKit) -> AsyncIterator[DeliveryWorker]:
    config = WorkerConfig(
        retry_schedule=(60.0,),
        timeout_ms=30_000,
        allow_private_targets=True,
        grace_seconds=0.2,
        claim_ahead=CLAIM_AHEAD,
    )
    worker = DeliveryWorker(kit.db, config, Metrics())
    try:
        yield worker
    finally:
        await worker.stop()


async def _started(kit: DeliveryKit, gated: GatedReceiver, worker: DeliveryWorker) -> None:
    """Events for a subscription to the gated receiver, and the worker holding as
    many as it may: ``max_in_flight`` sent, ``AHEAD`` more waiting."""
    await kit.subscription(url=gated.receiver.url(), ordering="none", max_in_flight=MAX_IN_FLIGHT)
    await kit.events(*[("t", None) for _ in range(EVENTS)], together=True)
    await worker.start()
    await _holding(kit, gated, sent=MAX_IN_FLIGHT, held=MAX_IN_FLIGHT + AHEAD)


async def _holding(kit: DeliveryKit, gated: GatedReceiver, *, sent: int, held: int) -> None:
    """Wait until ``sent`` requests are at the receiver and ``held`` deliveries leased.

    The leases are read on both sides of the receiver: a claim may lease more
    for a moment (a probe's room for subscriptions not met yet) and give the
    rest back, and one reading before the requests arrive is not the state
    they arrived in."""

    async def leased() -> int:
        return (await kit.statuses()).get("in_flight", 0)

    async def there() -> bool:
        if await leased() != held:
            return False
        return len(gated.receiver.in_progress()) == sent and await leased() == held

    await wait_until(
        there, DEADLINE, message=lambda: f"{sent} requests at the receiver, {held} leased"
    )


async def test_claims_ahead_but_sends_within_max_in_flight(
    kit: DeliveryKit, gated: GatedReceiver, worker: DeliveryWorker
) -> None:
    await _started(kit, gated, worker)
    gated.open()

    async def all_delivered() -> bool:
        return (await kit.statuses()) == {"succeeded": EVENTS}

    await wait_until(all_delivered, DEADLINE, message="every delivery succeeded")
    assert len(gated.receiver.receipts) == EVENTS, "each event sent once"
    assert len(gated.receiver.ids()) == EVENTS
    assert gated.max_concurrent() <= MAX_IN_FLIGHT


async def test_a_failure_gives_back_what_was_claimed_ahead(
    kit: DeliveryKit, gated: GatedReceiver, worker: DeliveryWorker
) -> None:
    await _started(kit, gated, worker)

    gated.answer(500)

    # The failures are written, what was held ahead is given back, and only
    # what the slots allow is claimed again: nothing is held ahead any more.
    await _holding(kit, gated, sent=MAX_IN_FLIGHT, held=MAX_IN_FLIGHT)
    assert len(gated.receiver.receipts) == 2 * MAX_IN_FLIGHT
    assert (await kit.statuses()) == {"in_flight": MAX_IN_FLIGHT, "pending": EVENTS - 2}


async def test_stopping_gives_back_what_was_claimed_ahead(
    kit: DeliveryKit, gated: GatedReceiver, worker: DeliveryWorker
) -> None:
    await _started(kit, gated, worker)

    await worker.stop()  # the held requests outlast the grace period

    assert (await kit.statuses()) == {"pending": EVENTS}
    assert len(gated.receiver.receipts) == MAX_IN_FLIGHT
