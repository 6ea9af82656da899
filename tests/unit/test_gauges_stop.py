"""Stopping the database gauges lets a refresh under way finish (for up to
``STOP_WAIT_SECONDS``): cancelled mid-connect, aiosqlite's thread would answer
into a loop closed by then."""

from __future__ import annotations

import asyncio

import pytest

from app import gauges as gauges_module
from app.domain.circuit import CircuitPolicy
from app.gauges import DatabaseGauges


class GatedGauges(DatabaseGauges):
    def __init__(self) -> None:
        super().__init__(None, circuit=CircuitPolicy(), interval_seconds=60.0)  # type: ignore[arg-type]
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.refreshes = 0

    async def refresh(self) -> None:
        self.started.set()
        await self.gate.wait()
        self.refreshes += 1


async def test_stop_waits_for_the_refresh_under_way_and_refreshes_no_more() -> None:
    gauges = GatedGauges()
    gauges.start()
    await asyncio.wait_for(gauges.started.wait(), 5.0)
    stopping = asyncio.create_task(gauges.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done(), "stop returned with a refresh under way"
    gauges.gate.set()
    await asyncio.wait_for(stopping, 5.0)
    assert gauges.refreshes == 1


async def test_stop_ends_the_wait_between_refreshes_at_once() -> None:
    gauges = GatedGauges()
    gauges.gate.set()
    gauges.start()
    await asyncio.wait_for(gauges.started.wait(), 5.0)
    await asyncio.wait_for(gauges.stop(), 1.0)  # not the 60 s interval
    assert gauges.refreshes == 1


async def test_a_refresh_that_does_not_finish_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gauges_module, "STOP_WAIT_SECONDS", 0.05)
    gauges = GatedGauges()
    gauges.start()
    await asyncio.wait_for(gauges.started.wait(), 5.0)
    await asyncio.wait_for(gauges.stop(), 1.0)
    assert gauges.refreshes == 0


class TimedGauges(DatabaseGauges):
    """Refreshes that take ``cost`` seconds of the event loop's clock."""

    def __init__(self, cost: float) -> None:
        super().__init__(None, circuit=CircuitPolicy(), interval_seconds=0.01)  # type: ignore[arg-type]
        self.cost = cost
        self.refreshed_at: list[float] = []

    async def refresh(self) -> None:
        await asyncio.sleep(self.cost)
        self.refreshed_at.append(asyncio.get_running_loop().time())


async def test_a_slow_refresh_puts_the_next_one_off_in_proportion() -> None:
    gauges = TimedGauges(cost=0.005)
    gauges.start()
    try:
        deadline = asyncio.get_running_loop().time() + 5.0
        while len(gauges.refreshed_at) < 4:
            assert asyncio.get_running_loop().time() < deadline, gauges.refreshed_at
            await asyncio.sleep(0.01)
    finally:
        await gauges.stop()
    assert min(gauges.durations) >= 0.005
    assert gauges.next_wait() == gauges_module.COST_FACTOR * min(gauges.durations)
    # Once two refreshes were measured, each ended at least COST_FACTOR times
    # their duration after the one before, not the 0.01 s interval: the
    # refreshes take a bounded share.
    _, second, third, fourth = gauges.refreshed_at[:4]
    least = gauges_module.COST_FACTOR * 0.005 + 0.005
    assert third - second >= least
    assert fourth - third >= least


def test_a_quick_refresh_keeps_the_interval_and_one_slow_refresh_does_not_change_it() -> None:
    gauges = DatabaseGauges(None, circuit=CircuitPolicy(), interval_seconds=5.0)  # type: ignore[arg-type]
    gauges.record(0.02)
    gauges.record(0.02)
    assert gauges.next_wait() == 5.0
    gauges.record(0.5)  # held up once (a busy moment, a new connection)
    assert gauges.next_wait() == 5.0
    gauges.record(0.5)  # and again: that is what a refresh costs now
    assert gauges.next_wait() == gauges_module.COST_FACTOR * 0.5
