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
from app.worker.brokers.common import OVERDUE_CHECK_SECONDS, Deadlines, Overdue, Watched
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


# -- Overdue: one timer for a connection's deadlines ---------------------------------


async def _watched_wait(
    overdue: Overdue, seconds: float, wait: float, watches: list[Watched] | None = None
) -> str:
    """What an attempt under ``overdue`` reports after waiting ``wait`` seconds
    (its watch added to ``watches``)."""
    watched = overdue.watch(seconds)
    if watches is not None:
        watches.append(watched)
    try:
        await asyncio.sleep(wait)
        return "finished"
    except asyncio.CancelledError:
        if watched.timed_out():
            return "timed out"
        raise
    finally:
        overdue.end(watched)


async def test_an_overdue_attempt_is_cancelled_soon_after_its_deadline() -> None:
    overdue = Overdue()
    started = time.monotonic()
    assert await _watched_wait(overdue, 0.1, 10) == "timed out"
    took = time.monotonic() - started
    assert 0.1 <= took < 0.1 + OVERDUE_CHECK_SECONDS + 0.5
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0, "the watch's own cancellation was taken back"


async def test_attempts_within_their_deadlines_finish_and_leave_no_timer() -> None:
    overdue = Overdue()
    results = await asyncio.gather(*(_watched_wait(overdue, 5, 0.01) for _ in range(20)))
    assert results == ["finished"] * 20
    # The next check finds nothing watched and arms no timer again.
    await asyncio.sleep(OVERDUE_CHECK_SECONDS * 3)
    assert overdue._timer is None  # noqa: SLF001 - the one timer is what is under test


async def test_deadlines_apart_expire_apart() -> None:
    overdue = Overdue()
    short = asyncio.ensure_future(_watched_wait(overdue, 0.05, 10))
    long = asyncio.ensure_future(_watched_wait(overdue, 10, 0.5))
    assert await short == "timed out"
    assert not long.done()
    assert await long == "finished"


async def test_an_outside_cancellation_goes_on_under_the_watch() -> None:
    overdue = Overdue()
    attempt = asyncio.ensure_future(_watched_wait(overdue, 10, 10))
    await asyncio.sleep(0.01)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt


async def test_an_outside_cancellation_as_the_deadline_passes_goes_on_too() -> None:
    overdue = Overdue()
    watches: list[Watched] = []
    # Overdue at the first check.
    task = asyncio.ensure_future(_watched_wait(overdue, 0, 3600, watches))
    while not (watches and watches[0].expired):
        await asyncio.sleep(0)
    # The check has cancelled the attempt, which has not run since: a shutdown
    # cancels it too before it does.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_the_client_swallowed_is_seen_after_it_and_taken_back() -> None:
    overdue = Overdue()
    watched = overdue.watch(0)  # overdue at the first check
    try:
        with contextlib.suppress(asyncio.CancelledError):  # a client that swallows it
            await asyncio.Event().wait()
        assert watched.passed_unseen()
    finally:
        overdue.end(watched)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0, "the watch's own cancellation was taken back"


async def test_an_attempt_within_its_deadline_has_not_passed_it() -> None:
    overdue = Overdue()
    watched = overdue.watch(10)
    try:
        await asyncio.sleep(0)
        assert not watched.passed_unseen()
    finally:
        overdue.end(watched)
