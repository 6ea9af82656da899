"""Broker delivery throughput: eventrelay's worker against a bare loop of the same client.

    .venv/bin/python bench/destinations.py [--deliveries 20000] [--rounds 3]
                                           [--backend sqlite|postgres|both]
                                           [--types free,webhook,rabbitmq,nats,redis]
                                           [--orderings none,key]
                                           [--concurrency 64] [--loop uvloop|asyncio]
                                           [--json PATH]

Per backend, destination type and ordering (``none``; ``key`` over 100 keys),
``--rounds`` rounds, each of them:

1. A fresh database (SQLite file, or a PostgreSQL database created on the
   local server and dropped afterwards), migrated; one subscription to the
   destination (``max_in_flight`` = ``--concurrency``); ``--deliveries``
   events ingested through the store, a transaction per 500.
2. The bare loop: the same client library sending the same messages with the
   same guarantee, ``--concurrency`` in flight, in this process. Each message
   is built as the worker builds it: an envelope of the same size, the
   worker's headers (``app.domain.webhook.headers``: a fresh Standard Webhooks
   signature, ``user-agent``, a ``traceparent``) turned into the broker's
   message by the sender's own helpers — RabbitMQ publisher confirms with
   ``mandatory``, persistent, ``message_id`` (aio-pika); JetStream acks with
   ``Nats-Msg-Id`` through ``publish_async`` and a deadline timer (nats-py);
   ``XADD`` with the sender's fields (redis-py); HTTP POSTs to
   ``bench/receiver.py`` (aiohttp).
3. The drain: a :class:`~app.worker.worker.DeliveryWorker` in this process
   with its default senders, timed from its start until the database shows
   every delivery ``succeeded`` (the worker's success counter is watched
   first, so the poll does not take the worker's CPU).

The ``free`` type is the worker's own ceiling: a sender that takes every
message at once, so the drain is the store work and the attempt step alone
(its "bare loop" only builds and signs the messages; its ratio means nothing).

Rounds alternate which of the two goes first. Each case reports the median
rate of each and the median of the rounds' ratios. Each destination gets its
own exchange and queue, stream and subject, or key, removed afterwards. The
worker and the bare loop share this process and its event loop in turn
(never at once): uvloop, as ``eventrelay worker`` and ``serve`` run, or
asyncio's own with ``--loop asyncio`` (the only loop before 2026-12-07).
Targets (API issue): drain/baseline >= 0.5 with ``ordering: none`` and
>= 0.35 with ``ordering: key``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import nats
import uvloop
from common import lanes
from nats.js.api import StreamConfig
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.cli.server import freeze_startup_objects  # noqa: E402
from app.domain import tracecontext, webhook  # noqa: E402
from app.domain.events import NewEvent  # noqa: E402
from app.domain.ids import new_id  # noqa: E402
from app.domain.signing import secret_key  # noqa: E402
from app.domain.subscriptions import SubscriptionCreate  # noqa: E402
from app.metrics import Metrics  # noqa: E402
from app.services.subscriptions import SubscriptionService  # noqa: E402
from app.store.database import Database, open_database  # noqa: E402
from app.store.ingest import ingest  # noqa: E402
from app.store.migrations import upgrade_head  # noqa: E402
from app.worker.attempt import USER_AGENT  # noqa: E402
from app.worker.brokers.common import content_type, message_headers  # noqa: E402
from app.worker.brokers.redis_streams import fields  # noqa: E402
from app.worker.config import WorkerConfig  # noqa: E402
from app.worker.protocol import Message, SenderFactory, SendResult, accepted  # noqa: E402
from app.worker.worker import DeliveryWorker  # noqa: E402

BENCH = Path(__file__).resolve().parent
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
REDIS_URL = "redis://127.0.0.1:6379/0"
PG = "postgresql+asyncpg://postgres@127.0.0.1:5432"
SECRET = "whsec_" + base64.b64encode(b"eventrelay-destination-bench-key!").decode()
KEYS = 100
BATCH = 500
TARGETS = {"none": 0.5, "key": 0.35}
SUCCESSES = "eventrelay_delivery_attempts_total"


@dataclass
class Result:
    backend: str
    destination: str
    ordering: str
    deliveries: int
    baseline_per_s: float
    drain_per_s: float
    ratio: float
    rounds: list[tuple[float, float]]


@dataclass(frozen=True)
class Outgoing:
    """One message as the worker would build it: envelope, key and headers."""

    event_id: str
    key: str | None
    payload: bytes

    def message(self) -> Message:
        now = int(time.time())
        trace = tracecontext.headers(tracecontext.new_trace().child(os.urandom(8).hex()))
        headers = webhook.headers(
            event_id=self.event_id,
            timestamp=now,
            payload=self.payload,
            keys=[secret_key(SECRET)],
            user_agent=USER_AGENT,
            custom={},
            trace=trace,
        )
        return Message(self.payload, headers, 15.0, self.event_id, "order.created", self.key)


def outgoing(i: int, pad: int, ordering: str) -> Outgoing:
    event_id = new_id("evt")
    key = f"k{i % KEYS}" if ordering == "key" else None
    data = {"pad": "x" * pad}
    head = {"id": event_id, "type": "order.created", "timestamp": "", "key": key}
    payload = json.dumps(head | {"schema_version": None, "data": data}).encode()
    return Outgoing(event_id, key, payload)


async def closed_loop(send: Callable[[int], Awaitable[None]], n: int, concurrency: int) -> float:
    """Messages per second with ``concurrency`` in flight."""
    started = time.perf_counter()
    await lanes(send, n, concurrency)
    return n / (time.perf_counter() - started)


# --------------------------------------------------------------------------- destinations


@dataclass
class Target:
    destination: dict[str, Any]
    baseline: Callable[[list[Outgoing], int], Awaitable[float]]
    senders: SenderFactory | None = None


@contextlib.asynccontextmanager
async def rabbitmq() -> AsyncIterator[Target]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC)
    queue = await channel.declare_queue(name)
    await queue.bind(exchange, "#")

    async def baseline(messages: list[Outgoing], concurrency: int) -> float:
        confirmed = await connection.channel(publisher_confirms=True, on_return_raises=True)
        target = await confirmed.get_exchange(name, ensure=False)

        async def send(i: int) -> None:
            message = messages[i].message()
            await target.publish(
                aio_pika.Message(
                    message.payload,
                    headers=dict(message_headers(message)),
                    content_type=content_type(message),
                    message_id=message.event_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="order.created",
                mandatory=True,
            )

        try:
            return await closed_loop(send, len(messages), concurrency)
        finally:
            await confirmed.close()

    destination = {"type": "rabbitmq", "url": AMQP_URL, "exchange": name, "routing_key": "{type}"}
    try:
        yield Target(destination, baseline)
    finally:
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
        await connection.close()


@contextlib.asynccontextmanager
async def jetstream() -> AsyncIterator[Target]:
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    loop = asyncio.get_running_loop()

    async def baseline(messages: list[Outgoing], concurrency: int) -> float:
        async def send(i: int) -> None:
            message = messages[i].message()
            headers = message_headers(message)
            headers["Content-Type"] = content_type(message)
            headers["Nats-Msg-Id"] = f"base-{message.event_id}"
            ack = await js.publish_async(f"{name}.order.created", message.payload, headers=headers)
            deadline = loop.call_later(message.timeout_s, ack.cancel)
            try:
                await ack
            finally:
                deadline.cancel()

        return await closed_loop(send, len(messages), concurrency)

    destination = {"type": "nats", "url": NATS_URL, "subject": name + ".{type}"}
    try:
        yield Target(destination, baseline)
    finally:
        await js.delete_stream(name)
        await client.close()


@contextlib.asynccontextmanager
async def redis_streams() -> AsyncIterator[Target]:
    client = Redis.from_url(REDIS_URL)
    name = f"bench-{uuid.uuid4().hex[:8]}"

    async def baseline(messages: list[Outgoing], concurrency: int) -> float:
        async def send(i: int) -> None:
            await client.xadd(name + "-base", fields(messages[i].message()))

        return await closed_loop(send, len(messages), concurrency)

    try:
        yield Target({"type": "redis", "url": REDIS_URL, "stream": name}, baseline)
    finally:
        await client.delete(name, name + "-base")
        await client.aclose()


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Target]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / "receiver.py"),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode()
    url = f"http://127.0.0.1:{int(line.split()[1])}/hook"

    async def baseline(messages: list[Outgoing], concurrency: int) -> float:
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

            async def send(i: int) -> None:
                message = messages[i].message()
                async with session.post(url, data=message.payload, headers=message.headers) as r:
                    await r.read()

            return await closed_loop(send, len(messages), concurrency)

    try:
        yield Target({"type": "webhook", "url": url}, baseline)
    finally:
        proc.terminate()
        await proc.wait()


class Free:
    """A sender whose every destination takes every message at once."""

    def connection(self, destination: str) -> Free:
        return self

    async def send(self, message: Message) -> SendResult:
        return accepted(0)

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def free() -> AsyncIterator[Target]:
    """The worker's own ceiling: its store work and attempt step, no destination.
    Its "bare loop" only builds and signs the messages."""

    async def baseline(messages: list[Outgoing], concurrency: int) -> float:
        async def send(i: int) -> None:
            messages[i].message()

        return await closed_loop(send, len(messages), concurrency)

    yield Target({"type": "webhook", "url": "http://127.0.0.1:9/free"}, baseline, Free)


TYPES = {
    "free": free,
    "webhook": webhook_receiver,
    "rabbitmq": rabbitmq,
    "nats": jetstream,
    "redis": redis_streams,
}


# --------------------------------------------------------------------------- databases


@contextlib.asynccontextmanager
async def fresh_database(backend: str) -> AsyncIterator[Database]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite+aiosqlite:///{directory}/bench.db"
            await asyncio.to_thread(upgrade_head, url)
            db = open_database(url)
            try:
                yield db
            finally:
                await db.dispose()
        return
    name = f"er_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await asyncio.to_thread(upgrade_head, f"{PG}/{name}")
        db = open_database(f"{PG}/{name}", worker=True)
        try:
            yield db
        finally:
            await db.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def fill(db: Database, n: int, pad: int, ordering: str) -> None:
    now = datetime.now(UTC)
    data = json.dumps({"pad": "x" * pad})
    for start in range(0, n, BATCH):
        events = [
            NewEvent(
                id=new_id("evt"),
                type="order.created",
                key=f"k{i % KEYS}" if ordering == "key" else None,
                data_json=data,
                schema_version=None,
                occurred_at=None,
                received_at=now,
                idempotency_key=None,
                fingerprint=None,
            )
            for i in range(start, min(n, start + BATCH))
        ]
        await ingest(db, [events], ttl=timedelta(days=1), now=now)


async def succeeded(db: Database) -> int:
    from sqlalchemy import func, select

    from app.store import schema

    d = schema.deliveries
    async with db.read() as conn:
        found = await conn.scalar(select(func.count()).where(d.c.status == "succeeded"))
    return int(found or 0)


async def drain(db: Database, n: int, senders: SenderFactory | None) -> float:
    config = WorkerConfig(retry_schedule=(1.0,), timeout_ms=15000, allow_private_targets=True)
    metrics = Metrics()
    worker = DeliveryWorker(db, config, metrics, senders)
    started = time.perf_counter()
    await worker.start()
    try:
        # The worker's own count first (free to read), then the database, which
        # has them all once the next cycle has written the last outcomes.
        while (metrics.registry.get_sample_value(SUCCESSES, {"outcome": "success"}) or 0) < n:
            await asyncio.sleep(0.01)
        while await succeeded(db) < n:
            await asyncio.sleep(0.005)
        return n / (time.perf_counter() - started)
    finally:
        await worker.stop()


async def one_round(
    kind: str, target: Target, backend: str, ordering: str, round_: int, args: argparse.Namespace
) -> tuple[float, float]:
    async with fresh_database(backend) as db:
        service = SubscriptionService(db, allow_private_targets=True)
        fields: dict[str, Any] = {
            "ordering": ordering,
            "max_in_flight": args.concurrency,
            "secret": SECRET,
        }
        if target.destination["type"] == "webhook":
            fields["url"] = target.destination["url"]
        else:
            fields["destination"] = target.destination
        await service.create("default", SubscriptionCreate(**fields))
        await fill(db, args.deliveries, args.pad, ordering)
        messages = [outgoing(i, args.pad, ordering) for i in range(args.deliveries)]
        if round_ % 2 == 0:
            base = await target.baseline(messages, args.concurrency)
            rate = await drain(db, args.deliveries, target.senders)
        else:
            rate = await drain(db, args.deliveries, target.senders)
            base = await target.baseline(messages, args.concurrency)
    return base, rate


async def one(backend: str, kind: str, ordering: str, args: argparse.Namespace) -> Result:
    rounds: list[tuple[float, float]] = []
    async with TYPES[kind]() as target:
        for round_ in range(args.rounds):
            rounds.append(await one_round(kind, target, backend, ordering, round_, args))
    base = statistics.median(b for b, _ in rounds)
    rate = statistics.median(r for _, r in rounds)
    ratio = statistics.median(r / b for b, r in rounds)
    result = Result(backend, kind, ordering, args.deliveries, base, rate, ratio, rounds)
    each = "  ".join(f"{r:,.0f}/{b:,.0f}={r / b:.2f}" for b, r in rounds)
    print(
        f"{backend:8} {kind:9} {ordering:5} baseline {base:8,.0f}/s  drain {rate:8,.0f}/s  "
        f"ratio {ratio:.2f} (target {TARGETS[ordering]})  rounds drain/base: {each}",
        flush=True,
    )
    return result


async def main(args: argparse.Namespace) -> None:
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    results = [
        await one(backend, kind, ordering, args)
        for backend in backends
        for kind in args.types.split(",")
        for ordering in args.orderings.split(",")
    ]
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--types", default="free,webhook,rabbitmq,nats,redis")
    parser.add_argument("--orderings", default="none,key")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pad", type=int, default=200, help="bytes of filler in each event")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop (eventrelay's processes run on uvloop)",
    )
    parser.add_argument(
        "--collector",
        choices=("eventrelay", "python"),
        default="eventrelay",
        help="the garbage collector's settings: those eventrelay's processes apply after "
        "startup (startup objects frozen, a larger young generation), or Python's defaults",
    )
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    if arguments.collector == "eventrelay":
        freeze_startup_objects()
    (uvloop.run if arguments.loop == "uvloop" else asyncio.run)(main(arguments))
