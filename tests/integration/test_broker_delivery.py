"""The delivery worker into the real brokers, on both databases: per-key order,
the broker's refusal in the attempt log, the dead-letter queue and redrive,
and metrics by destination type — the same pipeline as webhooks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import nats
import pytest
from nats.js.api import StreamConfig

from app.domain.circuit import CircuitPolicy
from app.domain.subscriptions import SubscriptionPatch
from app.metrics import Metrics
from app.services.dlq import DeadLetterService
from app.services.subscriptions import SubscriptionService
from app.worker.config import WorkerConfig
from app.worker.worker import DeliveryWorker
from tests.brokers import AMQP_URL, NATS_URL, REDIS_URL, rabbit_queue, redis_client, require, unique
from tests.e2e.receivers import wait_until
from tests.integration.conftest import DeliveryKit

DEADLINE = 30.0


@dataclass
class Target:
    """A broker destination that starts out refusing (``broken``) until ``fix()``."""

    destination: dict[str, Any]
    received: Callable[[int], Awaitable[list[dict[str, Any]]]]  # n -> bodies, in broker order
    fix: Callable[[], Awaitable[None]]
    error: str  # what the broker's refusal says


@contextlib.asynccontextmanager
async def rabbitmq_target() -> AsyncIterator[Target]:
    async with rabbit_queue() as rabbit:
        missing = unique("later")

        async def fix() -> None:
            exchange = await rabbit.channel.declare_exchange(missing, aio_pika.ExchangeType.TOPIC)
            queue = await rabbit.channel.get_queue(rabbit.queue)
            await queue.bind(exchange, "#")

        async def received(n: int) -> list[dict[str, Any]]:
            messages = await rabbit.drain(n, DEADLINE)
            for m in messages:
                assert m.routing_key == f"t.{json.loads(m.body)['key']}"
            return [json.loads(m.body) for m in messages]

        destination = {
            "type": "rabbitmq",
            "url": AMQP_URL,
            "exchange": missing,
            "routing_key": "{type}.{key}",
        }
        try:
            yield Target(destination, received, fix, "NOT_FOUND")
        finally:
            cleanup = await rabbit.connection.channel()
            await cleanup.exchange_delete(missing)


@contextlib.asynccontextmanager
async def nats_target() -> AsyncIterator[Target]:
    require(NATS_URL, "NATS")
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    name = unique("s").replace("-", "_")

    async def fix() -> None:
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))

    async def received(n: int) -> list[dict[str, Any]]:
        async def all_there() -> list[Any] | None:
            info = await js.stream_info(name)
            return (
                None
                if info.state.messages < n
                else [await js.get_msg(name, seq) for seq in range(1, n + 1)]
            )

        messages = await wait_until(all_there, DEADLINE, message=lambda: f"{n} in the stream")
        return [json.loads(m.data) for m in messages]

    destination = {"type": "nats", "url": NATS_URL, "subject": name + ".{type}.{key}"}
    try:
        yield Target(destination, received, fix, "no JetStream stream")
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await client.close()


@contextlib.asynccontextmanager
async def redis_target() -> AsyncIterator[Target]:
    async with redis_client() as (client, keys):
        stream = unique("stream")
        keys.append(stream)
        await client.set(stream, "a string for now")

        async def fix() -> None:
            await client.delete(stream)

        async def received(n: int) -> list[dict[str, Any]]:
            async def all_there() -> list[Any] | None:
                entries = await client.xrange(stream)
                return entries if len(entries) >= n else None

            entries = await wait_until(all_there, DEADLINE, message=lambda: f"{n} entries")
            return [json.loads(fields[b"body"]) for _, fields in entries]

        destination = {"type": "redis", "url": REDIS_URL, "stream": stream}
        yield Target(destination, received, fix, "WRONGTYPE")


TARGETS = {"rabbitmq": rabbitmq_target, "nats": nats_target, "redis": redis_target}


@pytest.fixture(params=sorted(TARGETS))
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    async with TARGETS[request.param]() as made:
        yield made


@pytest.fixture
async def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def worker(kit: DeliveryKit, metrics: Metrics) -> AsyncIterator[DeliveryWorker]:
    config = WorkerConfig(
        retry_schedule=(0.05,),
        timeout_ms=5000,
        allow_private_targets=True,
        grace_seconds=1,
        circuit=CircuitPolicy(failure_threshold=1000),  # the circuit has its own test
    )
    worker = DeliveryWorker(kit.db, config, metrics)
    try:
        yield worker
    finally:
        await worker.stop()


async def test_refused_then_dead_lettered_then_redriven_in_order_per_key(
    kit: DeliveryKit, target: Target, worker: DeliveryWorker, metrics: Metrics
) -> None:
    kind = target.destination["type"]
    sub = await kit.subscription(url=None, destination=target.destination, ordering="key")
    specs = [("t", f"k{n % 3}") for n in range(12)]
    events = await kit.events(*specs)
    await worker.start()

    async def all_dead() -> bool:
        return (await kit.statuses()) == {"dead": 12}

    await wait_until(all_dead, DEADLINE, message=lambda: "every delivery dead-lettered")
    delivery = await kit.delivery_for(events[0], sub)
    attempts = await kit.attempts_of(delivery["id"])
    assert len(attempts) == 2
    assert all(target.error in (a["error"] or "") for a in attempts), attempts
    assert all(a["status_code"] is None for a in attempts)
    assert target.error in delivery["last_error"]

    await target.fix()
    dlq = DeadLetterService(kit.db, wake_workers=worker.wake)
    assert (
        await dlq.redrive_matching(
            sub.tenant_id, subscription_id=sub.id, event_type=None, limit=None
        )
        == 12
    )

    async def all_succeeded() -> bool:
        return (await kit.statuses()) == {"succeeded": 12}

    await wait_until(all_succeeded, DEADLINE, message=lambda: "every redriven delivery sent")
    bodies = await target.received(12)
    for key in ("k0", "k1", "k2"):
        expected = [e.id for e in events if e.key == key]
        assert [b["id"] for b in bodies if b["key"] == key] == expected
    sent = await kit.attempts_of((await kit.delivery_for(events[-1], sub))["id"])
    assert sent[-1]["error"] is None
    assert sent[-1]["response_body"]

    def count(outcome: str) -> float:
        value = metrics.registry.get_sample_value(
            "eventrelay_destination_attempts_total", {"destination": kind, "outcome": outcome}
        )
        return value or 0.0

    assert (count("retry"), count("dead_letter"), count("success")) == (12, 12, 12)


async def test_pause_resume_and_replay_into_a_broker(
    kit: DeliveryKit, worker: DeliveryWorker
) -> None:
    async with redis_client() as (client, keys):
        stream = unique("stream")
        keys.append(stream)
        destination = {"type": "redis", "url": REDIS_URL, "stream": stream}
        sub = await kit.subscription(url=None, destination=destination, ordering="none")
        service = SubscriptionService(kit.db, allow_private_targets=True, wake_workers=worker.wake)
        await service.patch(sub.tenant_id, sub.id, SubscriptionPatch(status="paused"))
        since = datetime.now(UTC) - timedelta(seconds=1)
        events = await kit.events(*[("t", None) for _ in range(5)], together=True)
        await worker.start()

        async def held() -> bool:
            return (await kit.statuses()) == {"pending": 5}

        await wait_until(held, DEADLINE, message=lambda: "paused deliveries held")
        assert await client.exists(stream) == 0, "nothing is sent while paused"

        await service.patch(sub.tenant_id, sub.id, SubscriptionPatch(status="active"))
        worker.subscription_changed(sub.id)

        async def entries(n: int) -> list[Any] | None:
            found = await client.xrange(stream)
            return found if len(found) >= n else None

        await wait_until(lambda: entries(5), DEADLINE, message=lambda: "resumed deliveries")
        assert await service.replay(sub.tenant_id, sub.id, since, None) == 5
        found = await wait_until(lambda: entries(10), DEADLINE, message=lambda: "replayed")
    ids = [fields[b"id"].decode() for _, fields in found]
    assert sorted(ids[:5]) == sorted(ids[5:]) == sorted(e.id for e in events)
