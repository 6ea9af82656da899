"""Per-key ordering, end to end: the real server, a flaky real receiver.

For one subscription and one ordering key, the first attempt of event N+1
starts only after event N's delivery succeeded; other keys never wait on a
stuck one. Events carry ``{"key", "seq"}`` in ``data`` so the receiver can
check the order it sees. One server per backend serves the module; each test
has its own event type and subscription.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest
from aiohttp import web

from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import (
    Receipt,
    Receiver,
    ReceiverPool,
    first_successes_by_key,
    pause,
    reply,
    requests_by_key,
    wait_until,
)

KEYS = 6
EVENTS_PER_KEY = 40
FAILURE_RATE = 0.3
DELIVERED_SECONDS = 60.0
PROMPT_SECONDS = 10.0


async def publish_in_order(relay: Relay, event_type: str, key: str, count: int) -> list[str]:
    """Post ``count`` events of one key one after the other (so their order is defined)."""
    ids = []
    for seq in range(count):
        accepted = await relay.publish(event_type, {"key": key, "seq": seq}, key=key)
        assert accepted["deliveries"] == 1, accepted
        ids.append(accepted["id"])
    return ids


def assert_strict_line_order(receipts: list[Receipt], expected: dict[str, int], note: str) -> None:
    """Per key: every event succeeded once in ingest order, and no attempt of
    event N+1 came before event N had succeeded."""
    assert first_successes_by_key(receipts) == {k: list(range(n)) for k, n in expected.items()}, (
        note
    )
    for key, seqs in requests_by_key(receipts).items():
        assert seqs == sorted(seqs), f"{key}: an attempt went out of order: {seqs} ({note})"
    finals: dict[str, Receipt] = {}
    for receipt in sorted(receipts, key=lambda r: r.at):
        previous = finals.get(receipt.webhook_id)
        assert previous is None or not previous.succeeded, (
            f"{receipt.webhook_id} was sent again after it succeeded ({note})"
        )
        finals[receipt.webhook_id] = receipt


async def assert_recorded(relay: Relay, receiver: Receiver, event_ids: list[str]) -> None:
    """Each delivery is ``succeeded`` with as many attempts as the receiver saw requests."""
    limit = asyncio.Semaphore(16)

    async def check(event_id: str) -> None:
        async with limit:
            delivery = await wait_until(
                lambda: relay.delivery_in(event_id, "succeeded"),
                PROMPT_SECONDS,
                interval=0.05,
                message=f"{event_id} recorded as succeeded",
            )
        assert delivery["attempts"] == len(receiver.for_event(event_id)), delivery

    await asyncio.gather(*(check(event_id) for event_id in event_ids))


# -- 3. order under random failures -------------------------------------------------


async def test_each_key_is_delivered_in_ingest_order_despite_random_failures(
    relay: Relay, receivers: ReceiverPool
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    note = f"seed {seed}"

    async def flaky(_: Receipt) -> web.StreamResponse:
        return reply(500 if rng.random() < FAILURE_RATE else 200)

    receiver = await receivers.start(flaky)
    event_type = unique_type("order")
    await relay.subscribe(
        receiver.url(), event_types=[event_type], ordering="key", retry_schedule=[0.02] * 20
    )
    keys = [f"key-{n}" for n in range(KEYS)]
    per_key = await asyncio.gather(
        *(publish_in_order(relay, event_type, key, EVENTS_PER_KEY) for key in keys)
    )
    event_ids = [event_id for ids in per_key for event_id in ids]

    await wait_until(
        lambda: receiver.succeeded_ids() >= set(event_ids),
        DELIVERED_SECONDS,
        message=lambda: f"{len(receiver.succeeded_ids())}/{len(event_ids)} delivered ({note})",
    )
    failures = sum(1 for r in receiver.receipts if not r.succeeded)
    assert failures > 0, f"the receiver never failed: the test proved nothing ({note})"
    assert_strict_line_order(receiver.receipts, dict.fromkeys(keys, EVENTS_PER_KEY), note)
    await assert_recorded(relay, receiver, event_ids)


# -- 4. a stuck key does not hold up the others ------------------------------------


@pytest.mark.parametrize("stall", ["failing", "hanging"])
async def test_a_stuck_key_does_not_delay_other_keys(
    relay: Relay, receivers: ReceiverPool, stall: str
) -> None:
    stuck_key, free_key = "A", "B"
    released = asyncio.Event()

    async def behave(receipt: Receipt) -> web.StreamResponse:
        data: dict[str, Any] = receipt.data
        if data["key"] == stuck_key and data["seq"] == 0 and not released.is_set():
            if stall == "failing":
                return reply(500)
            await pause(30, released)  # hanging: held until released
        return reply(200)

    receiver = await receivers.start(behave)
    event_type = unique_type("stuck")
    await relay.subscribe(
        receiver.url(),
        event_types=[event_type],
        ordering="key",
        retry_schedule=[0.3] * 50,  # A's head stays pending for 12 s at least
        timeout_ms=60_000,
    )
    stuck_ids = await publish_in_order(relay, event_type, stuck_key, 5)
    await wait_until(
        lambda: receiver.for_event(stuck_ids[0]), PROMPT_SECONDS, message="A's head attempted"
    )
    free_ids = await publish_in_order(relay, event_type, free_key, 20)

    await wait_until(
        lambda: receiver.succeeded_ids() >= set(free_ids),
        PROMPT_SECONDS,
        message=lambda: f"B delivered while A is stuck: {len(receiver.succeeded_ids())} done",
    )
    if stall == "failing":
        # B may well finish inside A's first retry delay (0.3 s): A's head goes
        # on being retried, and nothing else of A's goes out meanwhile.
        await wait_until(
            lambda: len(receiver.for_event(stuck_ids[0])) >= 2,
            PROMPT_SECONDS,
            message="A's head retried",
        )
    on_stuck = [r for r in receiver.receipts if r.data["key"] == stuck_key]
    assert {r.webhook_id for r in on_stuck} == {stuck_ids[0]}, "A's later events went early"
    assert not any(r.succeeded for r in on_stuck), "A's head got through before B finished"
    if stall == "hanging":
        assert on_stuck[0].in_progress, "A's head should still be hanging"

    released.set()
    await wait_until(
        lambda: receiver.succeeded_ids() >= set(stuck_ids),
        PROMPT_SECONDS,
        message="A delivered once released",
    )
    assert_strict_line_order(receiver.receipts, {stuck_key: 5, free_key: 20}, stall)
    await assert_recorded(relay, receiver, stuck_ids + free_ids)
