"""Broker destinations end to end: the real server process delivering into the
real RabbitMQ, NATS JetStream and Redis, in order per key, while the broker
itself refuses part of the publishes and, mid-stream, the network to it is cut
and restored.

Per type, 6 keys × 40 events. The refusals come from the broker: a RabbitMQ
queue with ``x-max-length`` and ``x-overflow: reject-publish`` that a slow
consumer drains (nacked confirms), a JetStream work-queue stream with
``discard: new`` at its limit, a Redis stream key that is briefly replaced by
a key of another type (``WRONGTYPE``). The server reaches the broker through a
TCP proxy this test cuts for a while. Lines block on a dead letter, and the
test redrives the dead-letter queue, so every event arrives, in order per key.
A broker process really stopped and restarted is ``test_broker_restart_e2e``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import aio_pika
import nats
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event, from_structured_event
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig
from standardwebhooks.webhooks import Webhook

from tests.brokers import (
    AMQP_URL,
    NATS_URL,
    REDIS_URL,
    Loops,
    TcpProxy,
    proxy_to,
    rabbit_queue,
    redis_client,
    require,
    unique,
    with_address,
)
from tests.e2e.conftest import ServerProcess, start_module_server
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import ReceiverPool, wait_until

KEYS = 6
EVENTS_PER_KEY = 40
DELIVERED_SECONDS = 120.0
CONSUMER_PAUSE = 0.004  # a slow consumer: the broker's limit is hit now and then
RETRIES = [0.05, 0.1, 0.2, 0.3, 0.5]
SWAP_EVERY = 16  # Redis: the stream is swapped out after every this many entries read


@pytest.fixture(scope="module")
def shared_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # A broker at its limit fails many attempts in a row; the circuit has its own tests.
    env = {"EVENTRELAY_CIRCUIT_FAILURE_THRESHOLD": "1000000"}
    yield from start_module_server(module_database_url, tmp_path_factory, env=env)


class Consumer:
    """What arrived at the broker, in the order a consumer read it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.loops = Loops()
        self.errors: list[str] = []

    def ids(self) -> set[str]:
        return {b["id"] for b in self.bodies}

    async def stop(self) -> None:
        await self.loops.stop()


@contextlib.asynccontextmanager
async def rabbitmq(proxy: TcpProxy) -> AsyncIterator[tuple[dict[str, Any], Consumer]]:
    limits = {"x-max-length": 8, "x-overflow": "reject-publish"}
    async with rabbit_queue(limits) as rabbit:
        consumer = Consumer()
        channel = await rabbit.connection.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.get_queue(rabbit.queue, ensure=False)

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            consumer.bodies.append(json.loads(message.body))
            await asyncio.sleep(CONSUMER_PAUSE)
            await message.ack()

        await queue.consume(take)
        destination = {
            "type": "rabbitmq",
            "url": with_address(AMQP_URL, "127.0.0.1", proxy.port),
            "exchange": rabbit.exchange,
            "routing_key": "{type}.{key}",
        }
        try:
            yield destination, consumer
        finally:
            await consumer.stop()


@contextlib.asynccontextmanager
async def jetstream(proxy: TcpProxy) -> AsyncIterator[tuple[dict[str, Any], Consumer]]:
    require(NATS_URL, "NATS")
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    name = unique("s").replace("-", "_")
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{name}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            max_msgs=8,
            discard=DiscardPolicy.NEW,
        )
    )
    consumer = Consumer()
    pull = await js.pull_subscribe(f"{name}.>", durable="reader", stream=name)

    async def consume() -> None:
        try:
            messages = await pull.fetch(4, timeout=0.5)
        except nats.errors.TimeoutError:
            return
        except Exception as exc:
            consumer.errors.append(repr(exc))
            return
        for message in messages:
            consumer.bodies.append(json.loads(message.data))
            await message.ack()
            await asyncio.sleep(CONSUMER_PAUSE)

    consumer.loops.repeat(consume)
    destination = {
        "type": "nats",
        "url": with_address(NATS_URL, "127.0.0.1", proxy.port),
        "subject": name + ".{type}.{key}",
    }
    try:
        yield destination, consumer
    finally:
        await consumer.stop()
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await client.close()


@contextlib.asynccontextmanager
async def redis_streams(proxy: TcpProxy) -> AsyncIterator[tuple[dict[str, Any], Consumer]]:
    async with redis_client() as (client, keys):
        stream, aside = unique("stream"), unique("aside")
        keys += [stream, aside]
        consumer = Consumer()
        last = "0-0"
        swap_now = asyncio.Event()

        async def consume() -> None:
            nonlocal last
            try:
                found = await client.xread({stream: last}, count=16, block=100)
            except Exception:  # WRONGTYPE while the key is swapped out
                await asyncio.sleep(0.01)
                return
            for _, entries in found:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    consumer.bodies.append(json.loads(fields[b"body"]))
                    if len(consumer.bodies) % SWAP_EVERY == 0:
                        swap_now.set()

        async def swap() -> None:
            # Atomically put a string where the stream was, and back a moment
            # later: every SWAP_EVERY entries read, while the publishes flow (so
            # that one of them meets it however fast they go), and every 0.15 s.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(swap_now.wait(), 0.15)
            swap_now.clear()
            if not await client.exists(stream):
                return
            async with client.pipeline(transaction=True) as pipe:
                await pipe.rename(stream, aside).set(stream, "not a stream").execute()
            await asyncio.sleep(0.06)
            async with client.pipeline(transaction=True) as pipe:
                await pipe.delete(stream).rename(aside, stream).execute()

        consumer.loops.repeat(consume)
        consumer.loops.repeat(swap)
        destination = {
            "type": "redis",
            "url": with_address(REDIS_URL, "127.0.0.1", proxy.port),
            "stream": stream,
            "maxlen": 100000,
        }
        try:
            yield destination, consumer
        finally:
            await consumer.stop()


BROKERS = {
    "rabbitmq": (AMQP_URL, rabbitmq, "basic.nack"),
    "nats": (NATS_URL, jetstream, "JetStream refused"),
    "redis": (REDIS_URL, redis_streams, "WRONGTYPE"),
}


async def publish_line(relay: Relay, event_type: str, key: str, seqs: range) -> list[str]:
    ids = []
    for seq in seqs:
        accepted = await relay.publish(event_type, {"key": key, "seq": seq}, key=key)
        assert accepted["deliveries"] == 1, accepted
        ids.append(accepted["id"])
    return ids


async def publish_all(relay: Relay, event_type: str, seqs: range) -> list[list[str]]:
    lines = (publish_line(relay, event_type, f"k{n}", seqs) for n in range(KEYS))
    return list(await asyncio.gather(*lines))


OUTAGE_ERRORS = ("connection lost", "cannot connect", "timed out")


async def failed_on_the_outage(
    relay: Relay, lines: list[list[str]], consumer: Consumer, seen: list[str]
) -> bool:
    """The head of some line has an attempt that failed because the broker was
    away; ``seen`` is left saying what each line's head is, for a timeout."""
    arrived = consumer.ids()
    seen.clear()
    for ids in lines:
        head = next((i for i in ids if i not in arrived), None)
        if head is None:
            continue
        attempts = await relay.attempts(head)
        errors = [a["error"] or "" for a in attempts]
        if any(o in e for e in errors for o in OUTAGE_ERRORS):
            return True
        delivery = await relay.delivery(head)
        seen.append(f"{head}: {delivery['status']}, {len(attempts)} attempts, last {errors[-1:]}")
    return False


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_in_order_per_key_through_refusals_an_outage_and_the_dlq(
    shared_server: ServerProcess, kind: str
) -> None:
    url, make, refusal = BROKERS[kind]
    require(url, kind)
    event_type = unique_type(kind)
    async with (
        Relay(shared_server) as relay,
        proxy_to(url) as proxy,
        make(proxy) as (destination, consumer),
    ):
        response = await relay.http.post(
            "/v1/subscriptions",
            json={
                "destination": destination,
                "event_types": [event_type],
                "ordering": "key",
                "on_dead_letter": "block",
                "retry_schedule": RETRIES,
                "max_in_flight": 64,
                "timeout_ms": 3000,
            },
        )
        assert response.status_code == 201, response.text
        sub = response.json()
        half = EVENTS_PER_KEY // 2
        before = await publish_all(relay, event_type, range(half))
        await wait_until(lambda: len(consumer.bodies) >= KEYS, DELIVERED_SECONDS)
        # Mid-stream the broker becomes unreachable until an attempt has failed on it.
        await proxy.cut()
        after = await publish_all(relay, event_type, range(half, EVENTS_PER_KEY))
        lines = [b + a for b, a in zip(before, after, strict=True)]
        heads: list[str] = []
        await wait_until(
            lambda: failed_on_the_outage(relay, lines, consumer, heads),
            DELIVERED_SECONDS,
            interval=0.2,
            message=lambda: f"an attempt while the broker is away; heads: {heads}",
        )
        await proxy.restore()
        expected = {f"k{n}": ids for n, ids in enumerate(lines)}
        every = {i for ids in lines for i in ids}
        redriven = 0

        async def all_arrived() -> bool:
            nonlocal redriven
            if every <= consumer.ids():
                return True
            answer = await relay.http.post("/v1/dlq/redrive", json={"subscription_id": sub["id"]})
            redriven += answer.json()["redriven"]
            return False

        await wait_until(
            all_arrived,
            DELIVERED_SECONDS,
            interval=0.5,
            message=lambda: (
                f"{len(every - consumer.ids())} events still missing "
                f"(consumer errors: {consumer.errors[-3:]})"
            ),
        )

    for key, ids in expected.items():
        seen = [b["id"] for b in consumer.bodies if b["key"] == key]
        assert list(dict.fromkeys(seen)) == ids, f"key {key} out of order"
    errors = await _attempt_errors(shared_server, sorted(every))
    assert any(refusal in e for e in errors), f"the broker refused nothing: {errors[:5]}"
    assert any(o in e for e in errors for o in OUTAGE_ERRORS), "the outage failed no attempt"
    assert proxy.connections >= 2, "the server connected again after the outage"


async def _attempt_errors(server: ServerProcess, event_ids: list[str]) -> list[str]:
    errors: list[str] = []
    async with Relay(server) as relay:
        for event_id in event_ids:
            errors += [a["error"] for a in await relay.attempts(event_id) if a["error"]]
    return errors


async def test_cloudevents_format_binary_on_webhooks_and_structured_on_brokers(
    shared_server: ServerProcess, receivers: ReceiverPool
) -> None:
    """Read back with the CloudEvents SDK; the signature verifies over the bytes sent."""
    event_type = unique_type("ce")
    receiver = await receivers.start()
    async with Relay(shared_server) as relay, rabbit_queue() as rabbit:
        hook = await relay.subscribe(receiver.url(), event_types=[event_type], format="cloudevents")
        response = await relay.http.post(
            "/v1/subscriptions",
            json={
                "destination": {
                    "type": "rabbitmq",
                    "url": rabbit.url,
                    "exchange": rabbit.exchange,
                    "routing_key": "{type}",
                },
                "event_types": [event_type],
                "format": "cloudevents",
            },
        )
        assert response.status_code == 201, response.text
        broker_secret = response.json()["secret"]
        accepted = await relay.publish(event_type, {"total": 42}, key="customer/42")
        (message,) = await rabbit.drain(1)
        (receipt,) = await wait_until(lambda: receiver.for_event(accepted["id"]), DELIVERED_SECONDS)

    binary = from_binary_event(HTTPMessage(receipt.headers, receipt.body))
    structured = from_structured_event(
        HTTPMessage({"content-type": message.content_type or ""}, message.body)
    )
    for event in (binary, structured):
        assert event.get_id() == accepted["id"]
        assert event.get_source() == "eventrelay"
        assert event.get_type() == event_type
        assert event.get_extension("partitionkey") == "customer/42"
        assert event.get_data() == {"total": 42}
        assert event.get_time() == datetime.fromisoformat(accepted["received_at"])
    assert message.content_type == "application/cloudevents+json"
    assert message.message_id == accepted["id"]
    Webhook(hook["secret"]).verify(receipt.body, receipt.headers)
    signed = {
        k: v.decode() if isinstance(v, bytes) else str(v)
        for k, v in (message.headers or {}).items()
    }
    Webhook(broker_secret).verify(message.body, signed)
