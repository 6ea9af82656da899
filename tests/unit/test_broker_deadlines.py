"""A broker attempt ends by its deadline even when the client swallows the cancellation.

On Python 3.11 ``asyncio.wait_for``, which the broker clients wait under,
returns instead of raising when a cancellation arrives as what it waits for
completes; a client that then waits on a broker gone silent must not hold the
attempt (the worker's slot, the key's line) past its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from app.worker.brokers import redis_streams
from app.worker.brokers.common import Deadlines
from app.worker.protocol import Message, Route, SendResult, accepted

MESSAGE = Message(b"{}", {"content-type": "application/json"}, 0.2, "evt_1", "t", "k", Route("s"))


async def deaf_to_cancellation() -> None:
    """Swallows the first cancellation and waits again, as a client that lost the
    deadline's cancellation does on a silent broker (a second one ends it)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    await asyncio.Event().wait()


async def within(seconds: float, work: Any) -> SendResult:
    """``work``'s result; fails the test (instead of hanging it) after ``seconds``."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait((task,), timeout=seconds)
    assert done, f"still running {seconds} s after the attempt's deadline"
    return task.result()


async def test_an_attempt_that_ignores_its_cancellation_times_out_at_its_deadline() -> None:
    async def attempt() -> SendResult:
        await deaf_to_cancellation()
        return accepted(0)

    started = time.perf_counter()
    result = await within(2.0, Deadlines().run(attempt(), started, MESSAGE, "waiting for X"))
    assert result.outcome.error == "timed out after 200 ms waiting for X"
    assert 0.2 <= time.perf_counter() - started < 1.0


async def test_an_attempt_in_time_gives_its_own_result_or_exception() -> None:
    async def quick() -> SendResult:
        return accepted(1, "fine")

    async def broken() -> SendResult:
        raise ValueError("a bug")

    deadlines = Deadlines()
    assert (await deadlines.run(quick(), time.perf_counter(), MESSAGE, "x")).response_body == "fine"
    with pytest.raises(ValueError, match="a bug"):
        await deadlines.run(broken(), time.perf_counter(), MESSAGE, "x")


async def test_cancelling_the_caller_cancels_the_attempt() -> None:
    reached, cancelled = asyncio.Event(), asyncio.Event()

    async def attempt() -> SendResult:
        reached.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return accepted(0)

    slow = Message(b"{}", {}, 60.0, route=Route("s"))
    caller = asyncio.create_task(Deadlines().run(attempt(), time.perf_counter(), slow, "x"))
    await reached.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(cancelled.wait(), 2.0)


class DeafPipeline:
    """A pipeline whose XADDs never answer and which ignores its cancellation."""

    def xadd(self, *_: object, **__: object) -> DeafPipeline:
        return self

    async def execute(self, raise_on_error: bool = True) -> list[bytes]:
        await deaf_to_cancellation()
        return [b"0-1"]


class DeafRedis:
    """A Redis client whose commands never answer."""

    async def ping(self) -> bool:
        return True

    def pipeline(self, transaction: bool = True) -> DeafPipeline:
        return DeafPipeline()

    async def aclose(self) -> None:
        return None


async def test_the_redis_sender_times_out_a_deaf_client(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(url: str) -> DeafRedis:
        return DeafRedis()

    monkeypatch.setattr(redis_streams, "_connect", connect)
    sender = redis_streams.redis_sender(allow_private=True)
    try:
        connection = sender.connection("redis://127.0.0.1:6379/0")
        result = await within(2.0, connection.send(MESSAGE))
    finally:
        await sender.close()
    assert result.outcome.error == "timed out after 200 ms waiting for XADD"
