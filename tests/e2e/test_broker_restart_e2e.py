"""A broker stopped and restarted mid-stream loses nothing: the real server process
delivering 6 keys × 40 events with ``ordering: key`` into a broker of the test's
own (:mod:`tests.e2e.broker_processes`), which the test stops — SIGTERM, or
SIGKILL where the broker's durability promises an acknowledged message survives
it — and starts again on the same port with the same data directory.

Afterwards every event is at the broker at least once, in order per key (a
duplicate can only repeat the head of its line, right after itself: the ack of
a stored message was lost and the attempt retried); JetStream drops those
duplicates by ``Nats-Msg-Id``, Redis and RabbitMQ keep them (the contract is
at-least-once). The server process is the same one throughout and healthy, the
attempt log holds what went wrong while the broker was away, and the worker's
reconnect backoff found the broker again within a bound the backoff implies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from nats.js.api import StorageType, StreamConfig
from redis.asyncio import Redis

from app.worker.brokers.link import MAX_BACKOFF
from tests.e2e.broker_processes import BrokerProcess, broker_process
from tests.e2e.conftest import ServerFactory
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import wait_until

KEYS = 6
EVENTS_PER_KEY = 40
TOTAL = KEYS * EVENTS_PER_KEY
STOP_AFTER = TOTAL // 5  # the broker holds this many when it is stopped
RETRIES = [0.05, 0.1, 0.2, 0.4, 0.8] + [1.0] * 45  # outlasts any outage here (50 at most)
SLACK = 5.0  # a worker cycle, an attempt, a poll: on a loaded two-core machine
DELIVERED_SECONDS = 30.0
OUTAGE_ERRORS = ("connection lost", "cannot connect")


class Sink(ABC):
    """What a broker holds, read by the test's own short-lived clients (the broker
    goes away under them)."""

    destination: dict[str, Any]

    @abstractmethod
    async def create(self) -> None: ...

    @abstractmethod
    async def count(self) -> int: ...

    @abstractmethod
    async def bodies(self) -> list[dict[str, Any]]:
        """Every message, in the order a consumer reads them."""

    async def count_or_zero(self) -> int:
        with contextlib.suppress(Exception):
            return await asyncio.wait_for(self.count(), 5)
        return 0


class NatsSink(Sink):
    """A file-backed stream (limits retention) taking ``<name>.>``."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.url = broker.url
        self.name = "restart_" + unique_type("s").replace(".", "_")
        self.destination = {"type": "nats", "url": self.url, "subject": self.name + ".{key}"}

    async def create(self) -> None:
        client = await nats.connect(self.url)
        try:
            config = StreamConfig(
                name=self.name, subjects=[f"{self.name}.>"], storage=StorageType.FILE
            )
            await client.jetstream().add_stream(config)
        finally:
            await client.close()

    async def count(self) -> int:
        client = await nats.connect(self.url, allow_reconnect=False)
        try:
            return int((await client.jetstream().stream_info(self.name)).state.messages)
        finally:
            await client.close()

    async def bodies(self) -> list[dict[str, Any]]:
        client = await nats.connect(self.url)
        try:
            js = client.jetstream()
            state = (await js.stream_info(self.name)).state
            seqs = range(state.first_seq, state.last_seq + 1) if state.messages else range(0)
            return [json.loads((await js.get_msg(self.name, seq)).data) for seq in seqs]
        finally:
            await client.close()


class RedisSink(Sink):
    def __init__(self, broker: BrokerProcess) -> None:
        self.url = broker.url
        self.stream = unique_type("restart")
        self.destination = {"type": "redis", "url": self.url, "stream": self.stream}

    async def create(self) -> None:
        """Nothing: ``XADD`` makes the stream."""

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Redis]:
        client = Redis.from_url(self.url, socket_timeout=5)
        try:
            yield client
        finally:
            await client.aclose()

    async def count(self) -> int:
        async with self.client() as client:
            return int(await client.xlen(self.stream))

    async def bodies(self) -> list[dict[str, Any]]:
        async with self.client() as client:
            entries = await client.xrange(self.stream)
        return [json.loads(fields[b"body"]) for _, fields in entries]


class RabbitSink(Sink):
    """A durable topic exchange and a durable queue bound to every routing key."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.url = broker.url
        self.exchange, self.queue = unique_type("x"), unique_type("q")
        self.destination = {
            "type": "rabbitmq",
            "url": self.url,
            "exchange": self.exchange,
            "routing_key": "{key}",
        }

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        connection = await aio_pika.connect(self.url, timeout=5)
        try:
            yield await connection.channel()
        finally:
            await connection.close()

    async def create(self) -> None:
        async with self.channel() as channel:
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.queue, durable=True)
            await queue.bind(exchange, "#")

    async def count(self) -> int:
        async with self.channel() as channel:
            queue = await channel.declare_queue(self.queue, passive=True)
            return int(queue.declaration_result.message_count or 0)

    async def bodies(self) -> list[dict[str, Any]]:
        found = []
        async with self.channel() as channel:
            queue = await channel.get_queue(self.queue, ensure=False)
            while (message := await queue.get(fail=False)) is not None:
                found.append(json.loads(message.body))
                await message.ack()
        return found


SINKS: dict[str, type[NatsSink] | type[RedisSink] | type[RabbitSink]] = {
    "nats": NatsSink,
    "redis": RedisSink,
    "rabbitmq": RabbitSink,
}

# (broker, signal, broker options): SIGKILL only where an acknowledged message survives it.
CASES = [
    pytest.param("nats", signal.SIGTERM, {}, id="nats-sigterm"),
    pytest.param("nats", signal.SIGKILL, {}, id="nats-sigkill"),
    pytest.param("redis", signal.SIGTERM, {"fsync": "everysec"}, id="redis-sigterm"),
    pytest.param("redis", signal.SIGKILL, {"fsync": "always"}, id="redis-sigkill"),
    pytest.param("rabbitmq", signal.SIGTERM, {}, id="rabbitmq-sigterm"),
    pytest.param("rabbitmq", signal.SIGKILL, {}, id="rabbitmq-sigkill"),
]


async def publish_all(relay: Relay, event_type: str) -> list[list[str]]:
    async def line(key: str) -> list[str]:
        ids = []
        for seq in range(EVENTS_PER_KEY):
            accepted = await relay.publish(event_type, {"key": key, "seq": seq}, key=key)
            assert accepted["deliveries"] == 1, accepted
            ids.append(accepted["id"])
        return ids

    return list(await asyncio.gather(*(line(f"k{n}") for n in range(KEYS))))


async def line_heads(relay: Relay, event_type: str) -> list[str]:
    """The first events of each key's line not yet delivered."""
    heads = []
    for n in range(KEYS):
        for status in ("pending", "in_flight"):
            params = {"type": event_type, "key": f"k{n}", "order": "asc", "limit": 2}
            response = await relay.http.get(
                "/v1/events", params=params | {"delivery_status": status}
            )
            assert response.status_code == 200, response.text
            heads += [e["id"] for e in response.json()["items"]]
    return heads


async def outage_errors(relay: Relay, event_type: str, others: list[str]) -> list[str]:
    """The errors of attempts at the heads of the lines that failed because the
    broker was away (any other error is added to ``others``, for a failure message)."""
    found: list[str] = []
    for event_id in await line_heads(relay, event_type):
        for attempt in await relay.attempts(event_id):
            error = attempt["error"] or ""
            if any(o in error for o in OUTAGE_ERRORS):
                found.append(error)
            elif error:
                others.append(error)
    return found


async def attempt_errors(relay: Relay, event_ids: list[str]) -> list[str]:
    """Every failed attempt's error, for ``event_ids``."""
    errors: list[str] = []
    for event_id in event_ids:
        errors += [a["error"] for a in await relay.attempts(event_id) if a["error"]]
    return errors


def collapse_repeats(ids: list[str]) -> list[str]:
    """``ids`` with each run of one ID kept once."""
    return [i for n, i in enumerate(ids) if n == 0 or ids[n - 1] != i]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "signum", "options"), CASES)
async def test_a_broker_restarted_mid_stream_loses_nothing(
    database_url: str,
    server_factory: ServerFactory,
    tmp_path: Path,
    kind: str,
    signum: signal.Signals,
    options: dict[str, str],
) -> None:
    with broker_process(kind, tmp_path / "broker", **options) as broker:
        # Every attempt fails during the outage; the circuit has tests of its own.
        server = server_factory(
            database_url, env={"EVENTRELAY_CIRCUIT_FAILURE_THRESHOLD": "1000000"}
        )
        assert server.process is not None
        pid = server.process.pid
        sink = SINKS[kind](broker)
        await sink.create()
        event_type = unique_type(kind)
        async with Relay(server) as relay:
            response = await relay.http.post(
                "/v1/subscriptions",
                json={
                    "destination": sink.destination,
                    "event_types": [event_type],
                    "ordering": "key",
                    "retry_schedule": RETRIES,
                    "max_in_flight": 64,
                    "timeout_ms": 3000,
                },
            )
            assert response.status_code == 201, response.text

            publishing = asyncio.create_task(publish_all(relay, event_type))
            await wait_until(
                lambda: _at_least(sink, STOP_AFTER),
                DELIVERED_SECONDS,
                interval=0.05,
                message="the first deliveries at the broker",
            )
            down_at = time.monotonic()
            stopped_in = await asyncio.to_thread(broker.stop, signum)
            lines = await publishing
            every = [i for ids in lines for i in ids]
            # The attempt log says what went wrong while the broker was away.
            others: list[str] = []
            errors = await wait_until(
                lambda: outage_errors(relay, event_type, others),
                DELIVERED_SECONDS,
                interval=0.5,
                message=lambda: f"an attempt that failed while the broker was away ({others[-3:]})",
            )
            started_in = await asyncio.to_thread(broker.start)
            up_at = time.monotonic()
            held = await sink.count_or_zero()
            assert held >= STOP_AFTER, f"the broker lost acknowledged messages: {held}"
            # The reconnect backoff's next try is due at most about as long after the
            # broker is back as the outage lasted (the delay doubles), and never more
            # than MAX_BACKOFF.
            bound = min(MAX_BACKOFF, up_at - down_at) + max(RETRIES) + SLACK
            await wait_until(
                lambda: _more_than(sink, held),
                bound,
                interval=0.1,
                message=f"a delivery {bound:.1f} s after the broker was back",
            )
            resumed_in = time.monotonic() - up_at
            await wait_until(
                lambda: _at_least(sink, TOTAL),
                DELIVERED_SECONDS,
                interval=0.2,
                message=lambda: f"{TOTAL} messages at the broker",
            )
            stats = await wait_until(
                lambda: _all_succeeded(relay), DELIVERED_SECONDS, message="every delivery done"
            )
            assert stats["deliveries"]["dead"] == 0, stats
            health = await relay.http.get("/healthz")
            assert health.status_code == 200, health.text
            failures = await attempt_errors(relay, every)

        bodies = await sink.bodies()

    assert server.running, "the server process died"
    assert server.process.pid == pid, "the server process is another one"
    received = [b["id"] for b in bodies]
    assert set(every) <= set(received), f"{len(set(every) - set(received))} events lost"
    for n, ids in enumerate(lines):
        seen = [b["id"] for b in bodies if b["key"] == f"k{n}"]
        assert collapse_repeats(seen) == ids, f"key k{n} out of order: {seen}"
    duplicates = len(received) - len(set(received))
    if kind == "nats":
        assert duplicates == 0, "JetStream kept a duplicate Nats-Msg-Id"
    # The broker going away closes the connection: no attempt waits for its deadline.
    late = [e for e in failures if "timed out" in e]
    assert not late, f"{len(late)} attempts waited for their deadline: {late[:3]}"
    reasons = sorted({re.sub(r"\(reconnecting in .*\)|:\d+", "", e) for e in failures})
    print(
        f"{kind} {signum.name}: stopped in {stopped_in:.1f} s, started in {started_in:.1f} s, "
        f"deliveries again {resumed_in:.1f} s after it served, {duplicates} duplicates, "
        f"{len(failures)} failed attempts; first outage error: {errors[0]!r}; reasons: {reasons}"
    )


async def _at_least(sink: Sink, n: int) -> bool:
    return await sink.count_or_zero() >= n


async def _more_than(sink: Sink, n: int) -> bool:
    return await sink.count_or_zero() > n


async def _all_succeeded(relay: Relay) -> dict[str, Any] | None:
    stats = await relay.stats()
    counts = stats["deliveries"]
    return stats if counts["succeeded"] + counts["dead"] >= TOTAL else None
