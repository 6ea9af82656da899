"""Group commit: concurrent submissions share one flush, each gets its own answer.

The flush is a fake that can be held open on a gate, so "these arrived while a
flush was running" is arranged, not hoped for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from app.services.group_commit import GroupCommitter

DEADLINE = 5.0


class FakeStore:
    """Doubles each item; records every flush; can hold a flush open."""

    def __init__(self, poison: int | None = None) -> None:
        self.flushes: list[list[int]] = []
        self.poison = poison
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.flushes.append(list(items))
        self.entered.set()
        await self.gate.wait()
        if self.poison is not None and self.poison in items:
            raise RuntimeError(f"item {self.poison} sank the transaction")
        return [item * 2 for item in items]

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self.gate.set()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds, failing after ``DEADLINE`` seconds."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not predicate():
                await asyncio.sleep(0.001)
    except TimeoutError:
        pytest.fail(f"not within {DEADLINE} s: {what}")


async def hold_first_flush(
    store: FakeStore, committer: GroupCommitter[int, int], first: int
) -> asyncio.Task[int]:
    """Submit ``first`` and return once its flush is running and held."""
    store.hold()
    task = asyncio.create_task(committer.submit(first))
    async with asyncio.timeout(DEADLINE):
        await store.entered.wait()
    return task


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def committer(store: FakeStore) -> AsyncIterator[GroupCommitter[int, int]]:
    running: GroupCommitter[int, int] = GroupCommitter(store.flush, writers=1)
    running.start()
    yield running
    store.release()
    await running.stop()


async def test_one_item_is_flushed_and_answered(
    store: FakeStore, committer: GroupCommitter[int, int]
) -> None:
    assert await committer.submit(21) == 42
    assert store.flushes == [[21]]


async def test_concurrent_submissions_share_a_flush(
    store: FakeStore, committer: GroupCommitter[int, int]
) -> None:
    first = await hold_first_flush(store, committer, 0)
    waiting = [asyncio.create_task(committer.submit(i)) for i in range(1, 21)]
    await until(lambda: committer._queue.qsize() == 20, "all 20 queued behind the held flush")
    store.release()
    results = await asyncio.gather(first, *waiting)
    assert results == [i * 2 for i in range(21)]
    assert store.flushes == [[0], list(range(1, 21))]


async def test_many_concurrent_submissions_are_batched(
    store: FakeStore, committer: GroupCommitter[int, int]
) -> None:
    results = await asyncio.gather(*(committer.submit(i) for i in range(200)))
    assert results == [i * 2 for i in range(200)]
    assert sorted(i for flush in store.flushes for i in flush) == list(range(200))
    assert max(len(flush) for flush in store.flushes) > 1
    assert len(store.flushes) < 200


async def test_batches_are_capped_at_max_batch(store: FakeStore) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(store.flush, writers=1, max_batch=8)
    committer.start()
    try:
        first = await hold_first_flush(store, committer, 0)
        waiting = [asyncio.create_task(committer.submit(i)) for i in range(1, 21)]
        await until(lambda: committer._queue.qsize() == 20, "all 20 queued")
        store.release()
        await asyncio.gather(first, *waiting)
    finally:
        await committer.stop()
    assert [len(flush) for flush in store.flushes] == [1, 8, 8, 4]


async def test_a_failed_flush_fails_every_submitter_of_that_batch(store: FakeStore) -> None:
    store.poison = 3
    committer: GroupCommitter[int, int] = GroupCommitter(store.flush, writers=1)
    committer.start()
    try:
        first = await hold_first_flush(store, committer, 0)
        batch = [asyncio.create_task(committer.submit(i)) for i in range(1, 6)]
        await until(lambda: committer._queue.qsize() == 5, "the batch is queued")
        store.release()
        assert await first == 0
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
        assert {str(o) for o in outcomes} == {"item 3 sank the transaction"}
        # The writer survives a failed flush.
        assert await committer.submit(7) == 14
    finally:
        await committer.stop()
    assert store.flushes == [[0], [1, 2, 3, 4, 5], [7]]


async def test_several_writers_answer_every_item(store: FakeStore) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(store.flush, writers=4)
    committer.start()
    try:
        results = await asyncio.gather(*(committer.submit(i) for i in range(100)))
    finally:
        await committer.stop()
    assert results == [i * 2 for i in range(100)]


async def test_on_flush_sees_each_batch_size(store: FakeStore) -> None:
    sizes: list[int] = []
    committer: GroupCommitter[int, int] = GroupCommitter(
        store.flush, writers=1, on_flush=sizes.append
    )
    committer.start()
    try:
        first = await hold_first_flush(store, committer, 0)
        waiting = [asyncio.create_task(committer.submit(i)) for i in range(1, 4)]
        await until(lambda: committer._queue.qsize() == 3, "queued")
        store.release()
        await asyncio.gather(first, *waiting)
    finally:
        await committer.stop()
    assert sizes == [1, 3]


async def test_submit_before_start_is_refused(store: FakeStore) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(store.flush)
    with pytest.raises(RuntimeError, match="not running"):
        await committer.submit(1)


async def test_stop_flushes_what_is_queued(store: FakeStore) -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(store.flush, writers=1)
    committer.start()
    first = await hold_first_flush(store, committer, 0)
    queued = [asyncio.create_task(committer.submit(i)) for i in range(1, 11)]
    await until(lambda: committer._queue.qsize() == 10, "queued behind the held flush")
    stopping = asyncio.create_task(committer.stop())
    store.release()
    async with asyncio.timeout(DEADLINE):
        await stopping
    assert await asyncio.gather(first, *queued) == [i * 2 for i in range(11)]


async def test_stop_lets_the_running_flush_finish(store: FakeStore) -> None:
    """An item already taken from the queue is in flight: stop() must not cancel it."""
    committer: GroupCommitter[int, int] = GroupCommitter(store.flush, writers=1)
    committer.start()
    in_flight = await hold_first_flush(store, committer, 5)
    stopping = asyncio.create_task(committer.stop())
    for _ in range(10):  # let stop() run as far as it goes without the flush finishing
        await asyncio.sleep(0)
    store.release()
    async with asyncio.timeout(DEADLINE):
        await stopping
    assert await in_flight == 10
