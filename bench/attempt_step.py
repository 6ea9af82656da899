"""The worker's own CPU per delivery, in-process: the attempt step and what surrounds it.

    .venv/bin/python bench/attempt_step.py [--attempts 2000] [--rounds 7]
    PYTHONPATH=/tmp/before .venv/bin/python bench/attempt_step.py   # another tree's code

No network and no database: a sender whose connection answers 200 at once
stands in for aiohttp, so what is timed is eventrelay's own work per
delivery, in the parts a drain goes through for each one (``ordering: none``,
one webhook subscription, events with a stored ``traceparent``):

- ``payload``: the body built from the claimed event (``app.worker.attempt.payload``);
- ``step``: ``AttemptStep.run`` (signing keys, trace headers, signed headers,
  the message, the send, the decision, the metrics, the completion), with the
  successes counted once per cycle of 256 as the worker does;
- ``policy``: the line policy's slot bookkeeping around it
  (``take_slot`` and ``next_after``/``free_slot``);
- ``rows``: the cycle's outcome parameters for PostgreSQL
  (``app.store.outcomes.outcome_rows`` as JSON, what asyncpg is then handed).

Each round times every part over ``--attempts`` deliveries; the report is the
best round per part, in µs per delivery (the least disturbed by other work on
a shared machine). Run it from a directory other than the repository's root
when ``PYTHONPATH`` names another tree.

``--nats URL`` times instead the attempt step through the real NATS JetStream
sender (a NATS subscription, ``subject: <stream>.{type}``), ``--concurrency``
attempts in flight as the worker keeps them, against a bare loop of nats-py's
``publish_async`` with the same headers (as ``bench/destinations.py`` does): µs
of this process's CPU per message, the best round of each, and their
difference, which is the worker's own share of a NATS delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from common import lanes

from app.domain import tracecontext, webhook
from app.domain.circuit import CircuitPolicy
from app.domain.destinations import Destination, NatsDestination
from app.domain.signing import secret_key
from app.metrics import Metrics
from app.store import outcomes
from app.store.events import StoredEvent
from app.store.sealed import Sealed
from app.store.subscriptions import Subscription
from app.store.work import Claimed
from app.worker.attempt import AttemptStep, payload
from app.worker.lines import LinePolicy
from app.worker.protocol import Message, SendResult, delivered

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CYCLE = 256


class InstantConnection:
    async def send(self, message: Message) -> SendResult:
        return delivered(3)


class InstantSender:
    def __init__(self) -> None:
        self._connection = InstantConnection()

    def connection(self, destination: str) -> InstantConnection:
        return self._connection

    async def close(self) -> None:
        return None


def subscription(destination: Destination | None = None) -> Subscription:
    now = datetime.now(UTC)
    return Subscription(
        id="sub_1",
        url="http://127.0.0.1:9/hook",
        description=None,
        event_types=["*"],
        secret=Sealed.plain(SECRET),
        previous_secret=None,
        previous_secret_expires_at=None,
        headers={},
        ordering="none",
        on_dead_letter="skip",
        retry_schedule=[0.5, 1, 2],
        timeout_ms=None,
        max_in_flight=64,
        rate_limit_per_second=None,
        status="active",
        disabled_reason=None,
        consecutive_failures=0,
        failing_since=None,
        circuit_open_until=None,
        created_at=now,
        updated_at=now,
        destination=destination,
    )


def work(n: int) -> list[tuple[Claimed, StoredEvent]]:
    now = datetime.now(UTC)
    data = '{"n": 1, "pad": "' + "x" * 200 + '"}'
    items = []
    for seq in range(1, n + 1):
        trace = tracecontext.new_trace()
        event = StoredEvent(
            seq, f"evt_{seq:020d}", "order.created", None, data, None, None, now, trace.traceparent
        )
        items.append((Claimed(seq, f"dlv_{seq:020d}", event.id, "sub_1", None, 0, 0), event))
    return items


def _as_is(value: datetime) -> datetime:
    return value


def timed(fn: Callable[[], Any], n: int) -> float:
    gc.collect()
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / n * 1e6


async def in_flight(send: Callable[[int], Awaitable[object]], n: int, concurrency: int) -> float:
    """µs of this process's CPU per call of ``send(0 … n-1)``, ``concurrency`` at once."""
    gc.collect()
    started = time.process_time()
    await lanes(send, n, concurrency)
    return (time.process_time() - started) / n * 1e6


async def nats_rounds(args: argparse.Namespace) -> None:
    import nats
    from nats.js.api import StreamConfig

    from app.worker.attempt import USER_AGENT
    from app.worker.brokers.common import content_type, message_headers
    from app.worker.brokers.nats_jetstream import nats_sender

    n = args.attempts
    client = await nats.connect(args.nats)
    js = client.jetstream()
    name = f"bench_step_{os.getpid()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    sender = nats_sender(allow_private=True)
    step = AttemptStep(sender, Metrics(), owner="w-1", retry_schedule=(1.0,), timeout_ms=10_000)
    policy = LinePolicy(64, 8, CircuitPolicy())
    destination = NatsDestination(url=args.nats, subject=name + ".{type}")
    policy.load("sub_1", subscription(destination), time.monotonic())
    line = policy.lines["sub_1"]
    items = work(n)
    bodies = [payload(event) for _, event in items]
    keys = [secret_key(SECRET)]

    async def worker_path(i: int) -> None:
        delivery, event = items[i]
        completion = await step.run(line, delivery, event, bodies[i])
        assert completion.status == "succeeded", completion.error

    async def bare(i: int) -> None:
        _, event = items[i]
        trace = tracecontext.headers(tracecontext.new_trace().child(os.urandom(8).hex()))
        message = Message(
            bodies[i],
            webhook.headers(
                event_id=event.id,
                timestamp=int(time.time()),
                payload=bodies[i],
                keys=keys,
                user_agent=USER_AGENT,
                custom={},
                trace=trace,
            ),
            10.0,
            event.id,
        )
        headers = message_headers(message)
        headers["Content-Type"] = content_type(message)
        headers["Nats-Msg-Id"] = f"base-{event.id}"
        ack = await js.publish_async(f"{name}.order.created", message.payload, headers=headers)
        await ack

    best: dict[str, float] = {}
    try:
        await in_flight(worker_path, min(n, 500), args.concurrency)  # connects
        for _ in range(args.rounds):
            for part, send in (("worker", worker_path), ("bare", bare)):
                await js.purge_stream(name)
                us = await in_flight(send, n, args.concurrency)
                best[part] = min(best.get(part, us), us)
    finally:
        await sender.close()
        await js.delete_stream(name)
        await client.close()
    print(
        f"nats worker {best['worker']:.1f} bare {best['bare']:.1f} "
        f"worker's own {best['worker'] - best['bare']:.1f} µs CPU a message"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--nats", metavar="URL", help="through the NATS sender (see above)")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    await (nats_rounds(args) if args.nats else step_rounds(args))


async def step_rounds(args: argparse.Namespace) -> None:
    n = args.attempts
    metrics = Metrics()
    step = AttemptStep(
        InstantSender(), metrics, owner="w-1", retry_schedule=(1.0,), timeout_ms=10_000
    )
    policy = LinePolicy(64, 8, CircuitPolicy())
    policy.load("sub_1", subscription(), time.monotonic())
    line = policy.lines["sub_1"]
    items = work(n)
    bodies = [payload(event) for _, event in items]

    def build() -> None:
        for _, event in items:
            payload(event)

    async def attempts() -> list[Any]:
        done = []
        for i, (delivery, event) in enumerate(items):
            done.append(await step.run(line, delivery, event, bodies[i]))
            if i % CYCLE == CYCLE - 1:
                step.count_successes()
        step.count_successes()
        return done

    def slots() -> None:
        for _ in range(n):
            policy.take_slot(line)
            policy.next_after(line, True, False)

    completions = await attempts()

    def rows() -> None:
        for i in range(0, n, CYCLE):
            rows = outcomes.outcome_rows(completions[i : i + CYCLE], _as_is)
            orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC)

    best: dict[str, float] = {}
    for _ in range(args.rounds):
        gc.collect()
        started = time.perf_counter()
        await attempts()
        step_us = (time.perf_counter() - started) / n * 1e6
        figures = {
            "payload": timed(build, n),
            "step": step_us,
            "policy": timed(slots, n),
            "rows": timed(rows, n),
        }
        for part, us in figures.items():
            best[part] = min(best.get(part, us), us)
    total = sum(best.values())
    print(" ".join(f"{part} {us:.2f}" for part, us in best.items()), f"total {total:.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
