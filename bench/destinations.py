"""Broker delivery throughput: eventrelay's worker against a bare loop of the same client.

    .venv/bin/python bench/destinations.py [--deliveries 5000] [--backend sqlite|postgres|both]
                                           [--types webhook,rabbitmq,nats,redis]
                                           [--concurrency 64] [--json PATH]

Per backend, destination type and ordering (``none``; ``key`` over 100 keys):

1. A fresh database (SQLite file, or a PostgreSQL database created on the
   local server and dropped afterwards), migrated; one subscription to the
   destination (``max_in_flight`` = ``--concurrency``); ``--deliveries``
   events ingested through the store, a transaction per 500.
2. The baseline: the same client library publishing the same bodies (same
   size, a fresh Standard Webhooks signature per message, the same headers)
   with the same guarantee — RabbitMQ publisher confirms with ``mandatory``
   and persistent messages (aio-pika), JetStream publish acks with
   ``Nats-Msg-Id`` (nats-py), ``XADD`` (redis-py), HTTP POSTs to
   ``bench/receiver.py`` (aiohttp) — ``--concurrency`` in flight, in this process.
3. The drain: a :class:`~app.worker.worker.DeliveryWorker` in this process
   with its default senders, timed from start until the database shows every
   delivery ``succeeded``.

Each destination gets its own exchange and queue, stream and subject, or key,
removed afterwards. The worker and the baseline share this process and its
event loop in turn (never at once). Targets (API issue): drain/baseline >= 0.5
with ``ordering: none`` and >= 0.35 with ``ordering: key``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
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
from nats.js.api import StreamConfig
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.domain.events import NewEvent  # noqa: E402
from app.domain.ids import new_id  # noqa: E402
from app.domain.signing import secret_key, signature_header  # noqa: E402
from app.domain.subscriptions import SubscriptionCreate  # noqa: E402
from app.metrics import Metrics  # noqa: E402
from app.services.subscriptions import SubscriptionService  # noqa: E402
from app.store.database import Database, open_database  # noqa: E402
from app.store.ingest import ingest  # noqa: E402
from app.store.migrations import upgrade_head  # noqa: E402
from app.worker.config import WorkerConfig  # noqa: E402
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


@dataclass
class Result:
    backend: str
    destination: str
    ordering: str
    deliveries: int
    baseline_per_s: float
    drain_per_s: float

    @property
    def ratio(self) -> float:
        return self.drain_per_s / self.baseline_per_s


def body(i: int, pad: int) -> tuple[str, bytes]:
    event_id = new_id("evt")
    data = {"n": i, "pad": "x" * pad}
    head = {"id": event_id, "type": "order.created", "timestamp": "", "key": None}
    return event_id, json.dumps(head | {"schema_version": None, "data": data}).encode()


def signed(event_id: str, payload: bytes) -> dict[str, str]:
    now = int(time.time())
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signature_header([secret_key(SECRET)], event_id, now, payload),
    }


async def closed_loop(send: Callable[[int], Awaitable[None]], n: int, concurrency: int) -> float:
    """Messages per second with ``concurrency`` in flight."""
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            await send(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


# --------------------------------------------------------------------------- destinations


@dataclass
class Target:
    destination: dict[str, Any]
    baseline: Callable[[list[tuple[str, bytes]], int], Awaitable[float]]


@contextlib.asynccontextmanager
async def rabbitmq() -> AsyncIterator[Target]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC)
    queue = await channel.declare_queue(name)
    await queue.bind(exchange, "#")

    async def baseline(bodies: list[tuple[str, bytes]], concurrency: int) -> float:
        confirmed = await connection.channel(publisher_confirms=True, on_return_raises=True)
        target = await confirmed.get_exchange(name, ensure=False)

        async def send(i: int) -> None:
            event_id, payload = bodies[i]
            headers = signed(event_id, payload)
            await target.publish(
                aio_pika.Message(
                    payload,
                    headers={k: v for k, v in headers.items() if k != "content-type"},
                    content_type="application/json",
                    message_id=event_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="order.created",
                mandatory=True,
            )

        try:
            return await closed_loop(send, len(bodies), concurrency)
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

    async def baseline(bodies: list[tuple[str, bytes]], concurrency: int) -> float:
        async def send(i: int) -> None:
            event_id, payload = bodies[i]
            headers = signed(event_id, payload) | {"Nats-Msg-Id": f"base-{event_id}"}
            await js.publish(f"{name}.order.created", payload, timeout=15, headers=headers)

        return await closed_loop(send, len(bodies), concurrency)

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

    async def baseline(bodies: list[tuple[str, bytes]], concurrency: int) -> float:
        async def send(i: int) -> None:
            event_id, payload = bodies[i]
            headers = signed(event_id, payload)
            fields: dict[Any, Any] = {"id": event_id, "type": "order.created", "body": payload}
            fields |= {k: v for k, v in headers.items() if k != "content-type"}
            await client.xadd(name + "-base", fields)

        return await closed_loop(send, len(bodies), concurrency)

    try:
        yield Target({"type": "redis", "url": REDIS_URL, "stream": name}, baseline)
    finally:
        await client.delete(name, name + "-base")
        await client.aclose()


@contextlib.asynccontextmanager
async def webhook() -> AsyncIterator[Target]:
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

    async def baseline(bodies: list[tuple[str, bytes]], concurrency: int) -> float:
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

            async def send(i: int) -> None:
                event_id, payload = bodies[i]
                async with session.post(url, data=payload, headers=signed(event_id, payload)) as r:
                    await r.read()

            return await closed_loop(send, len(bodies), concurrency)

    try:
        yield Target({"type": "webhook", "url": url}, baseline)
    finally:
        proc.terminate()
        await proc.wait()


TYPES = {"webhook": webhook, "rabbitmq": rabbitmq, "nats": jetstream, "redis": redis_streams}


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


async def drain(db: Database, n: int) -> float:
    config = WorkerConfig(retry_schedule=(1.0,), timeout_ms=15000, allow_private_targets=True)
    worker = DeliveryWorker(db, config, Metrics())
    started = time.perf_counter()
    await worker.start()
    try:
        while await succeeded(db) < n:
            await asyncio.sleep(0.01)
        return n / (time.perf_counter() - started)
    finally:
        await worker.stop()


async def one(backend: str, kind: str, ordering: str, args: argparse.Namespace) -> Result:
    async with TYPES[kind]() as target, fresh_database(backend) as db:
        service = SubscriptionService(db, allow_private_targets=True)
        fields: dict[str, Any] = {
            "ordering": ordering,
            "max_in_flight": args.concurrency,
            "secret": SECRET,
        }
        if kind == "webhook":
            fields["url"] = target.destination["url"]
        else:
            fields["destination"] = target.destination
        await service.create("default", SubscriptionCreate(**fields))
        await fill(db, args.deliveries, args.pad, ordering)
        bodies = [body(i, args.pad) for i in range(args.deliveries)]
        base = await target.baseline(bodies, args.concurrency)
        rate = await drain(db, args.deliveries)
    result = Result(backend, kind, ordering, args.deliveries, base, rate)
    print(
        f"{backend:8} {kind:9} {ordering:5} baseline {base:8,.0f}/s  drain {rate:8,.0f}/s  "
        f"ratio {result.ratio:.2f} (target {TARGETS[ordering]})",
        flush=True,
    )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--types", default="webhook,rabbitmq,nats,redis")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pad", type=int, default=200, help="bytes of filler in each event")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    results = [
        await one(backend, kind, ordering, args)
        for backend in backends
        for kind in args.types.split(",")
        for ordering in ("none", "key")
    ]
    if args.json:
        rows = [asdict(r) | {"ratio": r.ratio} for r in results]
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
