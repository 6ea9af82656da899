"""SIGTERM while deliveries are in flight: exit 0 within a bound, lose nothing.

Two deliveries are in flight when the signal arrives: one whose receiver
answers within the shutdown grace period (it must complete and be recorded
``succeeded``) and one whose receiver hangs past it (it must be given back:
``pending`` again right after the exit, not left in flight under a lease).
Checked for the standalone ``eventrelay worker`` (then a new worker delivers
what was given back) and for ``eventrelay serve`` with its embedded worker
(which must also stop accepting connections at once).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.e2e.conftest import ServerFactory
from tests.e2e.procs import Relay, WorkerPool, unique_type, worker_pool
from tests.e2e.receivers import Receipt, Receiver, ReceiverPool, pause, reply, wait_until

GRACE_SECONDS = 1.5
QUICK_SECONDS = 0.7  # well inside the grace period
EXIT_BOUND_SECONDS = GRACE_SECONDS + 6.0
SETTLE_SECONDS = 15.0
SHUTDOWN_ENV = {"EVENTRELAY_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS)}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    yield from worker_pool(tmp_path)


class Scenario:
    """A receiver answering the ``quick`` event in 0.7 s and hanging on the first
    request of the ``stuck`` one; both events on one subscription."""

    receiver: Receiver

    def __init__(self, receivers: ReceiverPool) -> None:
        self.receivers = receivers
        self.event_type = unique_type("shutdown")
        self.quick = ""
        self.stuck = ""

    async def behave(self, receipt: Receipt) -> web.StreamResponse:
        # By payload, not by id: a request may arrive before publish() has returned.
        role = receipt.data["role"]
        if role == "quick":
            await pause(QUICK_SECONDS, self.receivers.closing)
        elif role == "stuck" and len(self.receiver.for_event(receipt.webhook_id)) == 1:
            await pause(60, self.receivers.closing)
        return reply(200)

    async def start(self) -> None:
        self.receiver = await self.receivers.start(self.behave)

    async def publish(self, relay: Relay) -> None:
        await relay.subscribe(
            self.receiver.url(),
            event_types=[self.event_type],
            retry_schedule=[0.1] * 5,
            timeout_ms=120_000,
        )
        self.stuck = (await relay.publish(self.event_type, {"role": "stuck"}, key="s"))["id"]
        self.quick = (await relay.publish(self.event_type, {"role": "quick"}, key="q"))["id"]
        await wait_until(self.both_in_flight, SETTLE_SECONDS, message="both deliveries in flight")

    def both_in_flight(self) -> bool:
        return {r.webhook_id for r in self.receiver.in_progress()} == {self.quick, self.stuck}

    async def problems_after_exit(self, relay: Relay, code: int, took: float) -> list[str]:
        """Everything wrong after the exit, at once (one failure need not hide another)."""
        problems = []
        if code != 0:
            problems.append(f"exit code {code}, not 0 ({took:.1f} s after SIGTERM)")
        if [r.status for r in self.receiver.for_event(self.quick)] != [200]:
            problems.append("the attempt that fits in the grace period did not complete")
        quick = await relay.delivery(self.quick)
        if (quick["status"], quick["attempts"]) != ("succeeded", 1):
            problems.append(f"the completed attempt was not recorded: {quick}")
        stuck = await relay.delivery(self.stuck)
        if stuck["status"] != "pending":
            problems.append(
                "the attempt cut short by the shutdown was not given back (pending) but "
                f"left {stuck['status']!r} under its lease: {stuck}"
            )
        return problems

    async def check_delivered_later(self, relay: Relay) -> None:
        await wait_until(
            lambda: relay.delivery_in(self.stuck, "succeeded"),
            SETTLE_SECONDS,
            interval=0.05,
            message="the given-back delivery delivered by the next worker",
        )
        assert [r.status for r in self.receiver.for_event(self.quick)] == [200]
        assert self.receiver.for_event(self.stuck)[-1].status == 200


def sigterm(process: subprocess.Popen[bytes]) -> asyncio.Task[tuple[int, float]]:
    """Send SIGTERM; the task ends with (exit code, seconds until exit), or fails
    if the process outlives the bound."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)

    async def exited() -> tuple[int, float]:
        try:
            code = await asyncio.to_thread(process.wait, EXIT_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"still running {EXIT_BOUND_SECONDS} s after SIGTERM")
        return code, time.monotonic() - started

    return asyncio.create_task(exited())


async def test_sigterm_on_the_standalone_worker(
    database_url: str,
    server_factory: ServerFactory,
    workers: WorkerPool,
    receivers: ReceiverPool,
) -> None:
    scenario = Scenario(receivers)
    await scenario.start()
    api = server_factory(database_url, start=False, worker=False, env=SHUTDOWN_ENV)
    worker = workers.make(database_url, SHUTDOWN_ENV)
    await asyncio.gather(asyncio.to_thread(api.start), asyncio.to_thread(worker.start))
    async with Relay(api) as relay:
        await scenario.publish(relay)
        assert worker.process is not None
        assert scenario.both_in_flight(), "precondition: both attempts in flight at SIGTERM"
        code, took = await sigterm(worker.process)
        problems = await scenario.problems_after_exit(relay, code, took)
        assert problems == [], worker.log_path()

        await asyncio.to_thread(workers.make(database_url, SHUTDOWN_ENV).start)
        await scenario.check_delivered_later(relay)


async def test_sigterm_on_serve(
    database_url: str,
    server_factory: ServerFactory,
    receivers: ReceiverPool,
) -> None:
    scenario = Scenario(receivers)
    await scenario.start()
    server = await asyncio.to_thread(server_factory, database_url, env=SHUTDOWN_ENV)
    async with Relay(server) as relay:
        await scenario.publish(relay)
    assert server.process is not None
    assert scenario.both_in_flight(), "precondition: both attempts in flight at SIGTERM"
    exit_task = sigterm(server.process)
    # It stops accepting at once, while it still finishes its in-flight work.
    async with httpx.AsyncClient(base_url=server.base_url, timeout=1.0) as probe:

        async def refused() -> bool:
            try:
                await probe.get("/healthz")
            except httpx.ConnectError:
                return True
            except httpx.TransportError:
                return False  # accepted just before the listener closed, then dropped
            return False

        await wait_until(refused, GRACE_SECONDS, message="new connections refused")
    assert server.running, "the server exited before its in-flight attempts could finish"
    code, took = await exit_task

    # Look through an API-only server: a worker would take back what was left in
    # flight at its start and hide it. (Delivery after restart: the worker test.)
    inspector = await asyncio.to_thread(server_factory, database_url, worker=False)
    async with Relay(inspector) as relay:
        problems = await scenario.problems_after_exit(relay, code, took)
    assert problems == [], server.stdout_path(1)
