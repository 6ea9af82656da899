"""The worker on the real store with a fake sender: the policy end to end, no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from app.domain.circuit import CircuitPolicy
from app.metrics import Metrics
from app.store import schema
from app.store import subscriptions as subscription_store
from app.worker.config import WorkerConfig
from app.worker.protocol import Message, SendResult, delivered, failed, gone
from app.worker.worker import DeliveryWorker
from tests.e2e.receivers import wait_until
from tests.integration.conftest import DeliveryKit
from tests.unit.worker_fakes import FakeSender

DEADLINE = 10.0


@pytest.fixture
async def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
async def worker(kit: DeliveryKit, sender: FakeSender) -> AsyncIterator[DeliveryWorker]:
    config = WorkerConfig(
        retry_schedule=(60.0,),
        timeout_ms=1000,
        allow_private_targets=True,
        grace_seconds=0.2,
        circuit=CircuitPolicy(failure_threshold=2),
    )
    worker = DeliveryWorker(kit.db, config, Metrics(), senders=lambda: sender)
    try:
        yield worker
    finally:
        await worker.stop()


async def _settle(kit: DeliveryKit, expected: dict[str, int]) -> None:
    async def there() -> bool:
        return (await kit.statuses()) == expected

    await wait_until(there, DEADLINE, message=lambda: f"deliveries {expected}")


async def _first_attempt(kit: DeliveryKit, event_id: str) -> dict[str, Any]:
    """The event's only delivery, once its first attempt is recorded."""

    async def attempted() -> dict[str, Any] | None:
        (delivery,) = await kit.deliveries_of(event_id)
        return delivery if delivery["attempts"] == 1 else None

    found: dict[str, Any] = await wait_until(attempted, DEADLINE, message="the attempt recorded")
    return found


def answering(result: Callable[[], SendResult]) -> Callable[[Message], SendResult]:
    return lambda _: result()


async def test_successes_go_on_through_the_line_within_max_in_flight(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    sender.gate = asyncio.Event()
    sub = await kit.subscription(ordering="none", max_in_flight=2)
    await kit.events(*[("t", None) for _ in range(8)], together=True)
    await worker.start()

    await wait_until(lambda: len(sender.sent) == 2, DEADLINE, message="two sent")
    await asyncio.sleep(0.2)  # the worker would send more now if it were going to
    assert len(sender.sent) == 2, "max_in_flight holds"
    sender.gate.set()

    await _settle(kit, {"succeeded": 8})
    assert {s.destination for s in sender.sent} == {sub.url}
    assert len(sender.sent) == 8


async def test_a_failure_is_retried_later_on_the_schedule(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    sender.answer = answering(lambda: failed(2, "connection refused"))
    await kit.subscription()
    (event,) = await kit.events(("t", "k"))
    await worker.start()

    delivery = await _first_attempt(kit, event.id)
    assert delivery["status"] == "pending"
    assert len(sender.sent) == 1
    assert delivery["last_error"] == "connection refused"
    wait = (delivery["next_attempt_at"] - delivery["created_at"]).total_seconds()
    assert 60 * 0.8 - 5 <= wait <= 60 * 1.2 + 5


async def test_a_sender_that_raises_fails_the_attempt_and_it_is_retried(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    """A sender's own failure (a bug, a client library's leaked error) is a
    failed attempt with what happened, on the retry schedule: the delivery does
    not wait in flight for its lease, and its line is not held."""

    def broken(_: Message) -> SendResult:
        raise AttributeError("'NoneType' object has no attribute 'feed'")

    sender.answer = broken
    await kit.subscription()
    (event,) = await kit.events(("t", "k"))
    await worker.start()

    delivery = await _first_attempt(kit, event.id)
    assert delivery["status"] == "pending"
    assert delivery["last_error"] == (
        "the webhook sender failed: AttributeError: 'NoneType' object has no attribute 'feed'"
    )
    wait = (delivery["next_attempt_at"] - delivery["created_at"]).total_seconds()
    assert 60 * 0.8 - 5 <= wait <= 60 * 1.2 + 5


async def test_gone_dead_letters_and_disables_the_subscription(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    sender.answer = answering(lambda: gone(2))
    sub = await kit.subscription()
    await kit.events(("t", "k"))
    await worker.start()

    await _settle(kit, {"dead": 1})

    async def disabled() -> bool:
        s = schema.subscriptions
        async with kit.db.read() as conn:
            row = (await conn.execute(select(s).where(s.c.id == sub.id))).one()
        return (row.status, row.disabled_reason) == ("disabled", "gone")

    await wait_until(disabled, DEADLINE, message="the subscription disabled as gone")


async def test_the_circuit_opens_after_failures_in_a_row(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    sender.answer = answering(lambda: failed(2, "boom"))
    sub = await kit.subscription(ordering="none", max_in_flight=1)
    await kit.events(*[("t", None) for _ in range(5)], together=True)
    await worker.start()

    async def open_circuit() -> bool:
        s = schema.subscriptions
        async with kit.db.read() as conn:
            row = (await conn.execute(select(s).where(s.c.id == sub.id))).one()
        return row.circuit_open_until is not None

    await wait_until(open_circuit, DEADLINE, message="the circuit open")
    await asyncio.sleep(0.3)
    assert len(sender.sent) == 2, "nothing is sent while the circuit is open"


async def test_stopping_closes_the_sender(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    sender.answer = answering(lambda: delivered(1))
    await worker.start()
    await worker.stop()
    assert sender.closed


def by_type(
    ops: Callable[[], SendResult], others: Callable[[], SendResult]
) -> Callable[[Message], SendResult]:
    """Operator events answered by ``ops``, everything else by ``others``."""
    return lambda m: ops() if b'"type":"eventrelay.' in m.payload else others()


async def test_gone_is_reported_to_an_operator_subscription_through_the_worker(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    sender.answer = by_type(lambda: delivered(1), lambda: gone(2))
    sub = await kit.subscription(url="http://8.8.8.8/gone")
    ops = await kit.subscription(url="http://8.8.8.8/ops", event_types=["eventrelay.*"])
    (event,) = await kit.events(("order.created", "k"))
    await worker.start()

    await _settle(kit, {"dead": 1, "succeeded": 2})
    reported = [orjson.loads(s.message.payload) for s in sender.sent if s.destination == ops.url]
    assert [(r["type"], r["key"]) for r in reported] == [
        ("eventrelay.delivery.dead_lettered", sub.id),
        ("eventrelay.subscription.disabled", sub.id),
    ]
    assert reported[0]["data"]["event_id"] == event.id
    assert reported[0]["data"]["last_status_code"] == 410
    assert reported[1]["data"] == {"subscription_id": sub.id, "reason": "gone"}


async def test_the_circuit_opening_and_closing_are_reported_through_the_worker(
    kit: DeliveryKit, sender: FakeSender, worker: DeliveryWorker
) -> None:
    healthy = asyncio.Event()
    sender.answer = by_type(
        lambda: delivered(1), lambda: delivered(1) if healthy.is_set() else failed(2, "boom")
    )
    sub = await kit.subscription(url="http://8.8.8.8/flaky", ordering="none", max_in_flight=1)
    ops = await kit.subscription(url="http://8.8.8.8/ops", event_types=["eventrelay.*"])
    await kit.events(*[("t", None) for _ in range(3)], together=True)
    await worker.start()

    def reported() -> list[tuple[str, dict[str, object]]]:
        bodies = [orjson.loads(s.message.payload) for s in sender.sent if s.destination == ops.url]
        return [(b["type"], b["data"]) for b in bodies]

    await wait_until(lambda: reported(), DEADLINE, message="the circuit_opened event sent")
    assert reported() == [
        (
            "eventrelay.subscription.circuit_opened",
            {"subscription_id": sub.id, "consecutive_failures": 2},
        )
    ]
    healthy.set()
    await kit.set_subscription(sub.id, circuit_open_until=None)
    worker.subscription_changed(sub.id)
    await wait_until(lambda: len(reported()) == 2, DEADLINE, message="circuit_closed sent")
    assert reported()[1] == (
        "eventrelay.subscription.circuit_closed",
        {"subscription_id": sub.id, "consecutive_failures": 2},
    )


EVENTS_APART_SECONDS = 0.4  # one event every this long, over several cache lifetimes
EVENTS = 10


async def test_a_subscription_in_use_is_read_again_beside_the_deliveries(
    kit: DeliveryKit,
    sender: FakeSender,
    worker: DeliveryWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events one every 0.4 s for 4 s (four lifetimes of the worker's
    subscription cache): the subscription is read again before it goes stale,
    by the task that keeps it warm, and the delivery loop reads it only once,
    to meet it: no delivery waits for its subscription's read."""
    readers: list[str] = []
    real_get_many = subscription_store.get_many

    async def recording(db: Any, ids: Any) -> Any:
        task = asyncio.current_task()
        readers.append(task.get_name() if task is not None else "?")
        return await real_get_many(db, ids)

    monkeypatch.setattr(subscription_store, "get_many", recording)
    await kit.subscription(ordering="none")
    await worker.start()
    for n in range(EVENTS):
        await kit.events(("t", None))
        worker.wake()
        await wait_until(lambda n=n: len(sender.sent) == n + 1, DEADLINE, message="sent")
        await asyncio.sleep(EVENTS_APART_SECONDS)

    in_loop = [name for name in readers if name != "warm"]
    assert len(in_loop) == 1, f"the delivery loop read the subscription {len(in_loop)} times"
    assert readers.count("warm") >= 3, readers
