"""Crashes and leases: processes killed with SIGKILL lose no acknowledged event.

A killed process's claims come back (SQLite: the next worker releases them at
start; PostgreSQL: when their lease runs out and a live worker reaps them), so
every event still reaches the receiver - at least once, receivers dedupe on
``webhook-id`` - and per key the first successful receipts keep the ingest
order. Leases are kept short here so the tests wait seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.conftest import ServerFactory, ServerProcess
from tests.e2e.procs import Relay, WorkerPool, socket_ports, unique_type, worker_pool
from tests.e2e.receivers import (
    Receipt,
    Receiver,
    ReceiverPool,
    first_successes_by_key,
    pause,
    reply,
    slow,
    wait_until,
)

FAST_LEASES = {"EVENTRELAY_DELIVERY_TIMEOUT_MS": "500", "EVENTRELAY_LEASE_SECONDS": "1"}
RECOVERY_SECONDS = 45.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    yield from worker_pool(tmp_path)


async def publish_keys(
    relays: list[Relay], event_type: str, keys: list[str], per_key: int
) -> list[str]:
    """Each key's events one after the other, keys concurrently, APIs taken in turn."""

    async def one_key(key: str) -> list[str]:
        ids = []
        turn = itertools.cycle(relays)
        for seq in range(per_key):
            relay = next(turn)
            accepted = await relay.publish(event_type, {"key": key, "seq": seq}, key=key)
            assert accepted["deliveries"] == 1, accepted
            ids.append(accepted["id"])
        return ids

    per = await asyncio.gather(*(one_key(key) for key in keys))
    return [event_id for ids in per for event_id in ids]


async def assert_all_succeeded(relay: Relay, event_ids: list[str]) -> None:
    limit = asyncio.Semaphore(16)

    async def check(event_id: str) -> None:
        async with limit:
            await wait_until(
                lambda: relay.delivery_in(event_id, "succeeded"),
                RECOVERY_SECONDS,
                interval=0.1,
                message=f"{event_id} recorded as succeeded",
            )

    await asyncio.gather(*(check(event_id) for event_id in event_ids))


def redelivered(receiver: Receiver, before: list[Receipt]) -> set[str]:
    """Of the requests in ``before``, the events that were sent again later."""
    ids = {r.webhook_id for r in before}
    later = receiver.receipts[max(r.number for r in before) + 1 :]
    return ids & {r.webhook_id for r in later}


# -- 6. serve killed mid-delivery ----------------------------------------------------


async def test_sigkilled_server_delivers_everything_after_restart(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start(slow(0.3, cut_short=receivers.closing))
    server: ServerProcess = await asyncio.to_thread(
        server_factory, database_url, env={**FAST_LEASES, "EVENTRELAY_DELIVERY_TIMEOUT_MS": "1000"}
    )
    keys = [f"key-{n}" for n in range(10)]
    per_key = 8
    async with Relay(server) as relay:
        event_type = unique_type("crash")
        await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=[0.1] * 10)
        event_ids = await publish_keys([relay], event_type, keys, per_key)
    await wait_until(
        lambda: len(receiver.receipts) >= 15 and receiver.in_progress(),
        RECOVERY_SECONDS,
        message="deliveries under way",
    )
    server.kill()
    # Still unanswered after the process died: certainly not recorded as done.
    in_flight = receiver.in_progress()
    assert in_flight, "no request was in flight at the kill"
    assert len(receiver.succeeded_ids()) < len(event_ids), "nothing left to deliver after the kill"

    await asyncio.to_thread(server.start)
    async with Relay(server) as relay:
        await wait_until(
            lambda: receiver.ids() >= set(event_ids),
            RECOVERY_SECONDS,
            message=lambda: f"{len(receiver.ids())}/{len(event_ids)} events received",
        )
        await assert_all_succeeded(relay, event_ids)
    # What was in flight at the kill was never recorded: it is sent again.
    assert redelivered(receiver, in_flight) == {r.webhook_id for r in in_flight}
    assert first_successes_by_key(receiver.receipts) == {k: list(range(per_key)) for k in keys}


# -- 7. scale-out: two APIs, two workers, one killed --------------------------------


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_apis_two_workers_survive_a_killed_worker(
    database_url: str,
    server_factory: ServerFactory,
    workers: WorkerPool,
    receivers: ReceiverPool,
) -> None:
    receiver = await receivers.start(slow(0.1, cut_short=receivers.closing))
    apis: list[ServerProcess] = [
        server_factory(database_url, start=False, worker=False, env=FAST_LEASES) for _ in range(2)
    ]
    doomed, survivor = (workers.make(database_url, FAST_LEASES) for _ in range(2))
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in (*apis, doomed, survivor)))
    keys = [f"key-{n}" for n in range(8)]
    per_key = 15
    async with Relay(apis[0]) as first, Relay(apis[1]) as second:
        event_type = unique_type("scale")
        # Two in flight a worker (with what each may claim ahead, six of the
        # eight lines): one worker cannot hold every line, so the doomed one
        # gets some, whichever claims first.
        await first.subscribe(
            receiver.url(), event_types=[event_type], retry_schedule=[0.1] * 10, max_in_flight=2
        )
        posting = asyncio.create_task(publish_keys([first, second], event_type, keys, per_key))

        def doomed_in_flight() -> list[Receipt]:
            ports = socket_ports(doomed.pid)
            return [r for r in receiver.in_progress() if r.peer_port in ports]

        caught = await wait_until(
            doomed_in_flight, RECOVERY_SECONDS, interval=0.01, message="the doomed worker sending"
        )
        doomed.kill()
        caught = [r for r in caught if r.in_progress]
        assert caught, "the doomed worker's requests all finished before the kill"
        event_ids = await posting
        await wait_until(
            lambda: receiver.ids() >= set(event_ids),
            RECOVERY_SECONDS,
            message=lambda: f"{len(receiver.ids())}/{len(event_ids)} events received",
        )
        await assert_all_succeeded(second, event_ids)
    assert survivor.running
    # The killed worker's claims came back and the survivor sent them again.
    assert redelivered(receiver, caught) == {r.webhook_id for r in caught}
    assert first_successes_by_key(receiver.receipts) == {k: list(range(per_key)) for k in keys}


# -- a lease outlasts a long attempt -----------------------------------------------


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_slow_attempt_within_its_timeout_is_not_sent_twice(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    """A claim must stay with its worker for as long as the attempt may run: here
    the subscription allows 10 s per attempt and the receiver takes 3 s, far
    longer than a lease (0.5 s) or the default timeout (100 ms)."""
    answered: list[float] = []

    async def slow_once(_: Receipt) -> web.StreamResponse:
        if not answered:
            answered.append(0)
            await pause(3.0, receivers.closing)
        return reply(200)

    receiver = await receivers.start(slow_once)
    short_leases = {"EVENTRELAY_LEASE_SECONDS": "0.5", "EVENTRELAY_DELIVERY_TIMEOUT_MS": "100"}
    server: ServerProcess = await asyncio.to_thread(server_factory, database_url, env=short_leases)
    async with Relay(server) as relay:
        event_type = unique_type("lease")
        await relay.subscribe(
            receiver.url(), event_types=[event_type], timeout_ms=10_000, retry_schedule=[0.1]
        )
        accepted = await relay.publish(event_type, {"n": 1})
        delivery = await wait_until(
            lambda: relay.delivery_in(accepted["id"], "succeeded", "dead"),
            RECOVERY_SECONDS,
            interval=0.1,
        )
    requests = receiver.for_event(accepted["id"])
    assert len(requests) == 1, (
        f"sent {len(requests)} times; the second went out "
        f"{requests[1].at - requests[0].at:.1f} s after the first, while it was in flight"
    )
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 1), delivery
