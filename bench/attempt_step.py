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
  (``app.store.outcomes._outcome_arrays``, what asyncpg is then handed).

Each round times every part over ``--attempts`` deliveries; the report is the
best round per part, in µs per delivery (the least disturbed by other work on
a shared machine). Run it from a directory other than the repository's root
when ``PYTHONPATH`` names another tree.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from app.domain import tracecontext
from app.domain.circuit import CircuitPolicy
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


def subscription() -> Subscription:
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


def timed(fn: Callable[[], Any], n: int) -> float:
    gc.collect()
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
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
            outcomes._outcome_arrays(completions[i : i + CYCLE])

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
