"""FreshCache: entries in use are read again before they expire, and none is
served longer than its lifetime after its read began."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.services.fresh_cache import KEEP_WARM, REFRESH_AT, FreshCache

# Long enough that a test process descheduled for a while still keeps the
# margins the assertions rely on.
SECONDS = 1.0


class Source:
    """The value behind the cache, and every read of it with its start time."""

    def __init__(self) -> None:
        self.value = "v1"
        self.reads: list[float] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def load(self, key: str) -> str:
        self.reads.append(asyncio.get_running_loop().time())
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("the database is down")
        return f"{key}={self.value}"


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_an_entry_in_use_is_read_again_before_it_expires() -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    assert await cache.get("t") == "t=v1"
    first = source.reads[0]
    await _until(lambda: len(source.reads) == 2)
    # The second read began after three quarters of the first's lifetime, before it expired.
    assert REFRESH_AT * SECONDS <= source.reads[1] - first < SECONDS
    await _until(lambda: asyncio.get_running_loop().time() > first + SECONDS)
    reads = len(source.reads)
    assert await cache.get("t") == "t=v1"  # past the first read's life: served by the second
    assert len(source.reads) == reads


async def test_an_entry_not_used_lately_is_left_to_expire() -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    await cache.get("t")
    quiet_from = asyncio.get_running_loop().time() + SECONDS * (KEEP_WARM + 1)
    await _until(lambda: asyncio.get_running_loop().time() > quiet_from + SECONDS)
    # Refreshed while it had been used within KEEP_WARM lifetimes, then no more.
    assert len(source.reads) <= 1 + KEEP_WARM / REFRESH_AT + 1
    assert all(read < quiet_from for read in source.reads)
    assert "t" not in cache or not cache.hit("t")


async def test_a_change_at_the_source_is_served_within_one_lifetime() -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    loop = asyncio.get_running_loop()
    assert await cache.get("t") == "t=v1"
    await asyncio.sleep(SECONDS * 0.3)  # somewhere inside an entry's life
    source.value = "v2"
    changed = loop.time()
    while await cache.get("t") != "t=v2":  # a client using it all along
        assert loop.time() - changed < SECONDS, "the old value outlived its bound"
        await asyncio.sleep(0.005)


async def test_a_slow_refresh_does_not_stretch_the_old_entry() -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    loop = asyncio.get_running_loop()
    await cache.get("t")
    began = source.reads[0]
    source.gate = asyncio.Event()  # the refresh hangs
    source.value = "v2"
    await _until(lambda: len(source.reads) == 2)
    await _until(lambda: loop.time() > began + SECONDS)
    waiting = asyncio.create_task(cache.get("t"))  # expired: it joins the refresh
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert len(source.reads) == 2
    source.gate.set()
    assert await waiting == "t=v2"


async def test_forgetting_drops_the_entry_and_any_read_under_way() -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    source.gate = asyncio.Event()
    reading = asyncio.create_task(cache.get("t"))
    await _until(lambda: len(source.reads) == 1)
    cache.forget("t")  # a change made here while v1 was being read
    source.gate.set()
    assert await reading == "t=v1"
    assert "t" not in cache
    source.value = "v2"
    assert await cache.get("t") == "t=v2"
    cache.forget()
    assert len(cache) == 0


async def test_a_failed_refresh_leaves_the_failure_to_the_next_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    loop = asyncio.get_running_loop()
    await cache.get("t")
    began = source.reads[0]
    source.fail = True
    await _until(lambda: len(source.reads) == 2)
    assert await cache.get("t") == "t=v1"  # still within its life
    await _until(lambda: loop.time() > began + SECONDS)
    with pytest.raises(ConnectionError):
        await cache.get("t")
    source.fail = False
    assert await cache.get("t") == "t=v1"
    assert "never retrieved" not in caplog.text


async def test_a_closed_cache_waits_for_its_read_and_reads_nothing_more() -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    loop = asyncio.get_running_loop()
    await cache.get("t")
    source.gate = asyncio.Event()  # the refresh under way hangs
    await _until(lambda: len(source.reads) == 2)
    refreshed = source.reads[1]
    closing = asyncio.create_task(cache.close())
    await asyncio.sleep(0.01)
    assert not closing.done(), "close returned with a read under way"
    source.gate.set()
    await closing
    # Past the point where the refreshed entry would have been read again.
    await _until(lambda: loop.time() > refreshed + SECONDS)
    assert len(source.reads) == 2


async def test_a_read_older_than_max_age_is_read_again_once() -> None:
    now = [0.0]
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS, clock=lambda: now[0])
    assert await cache.get("t") == "t=v1"
    source.value = "v2"
    assert await cache.get("t", max_age=0.1) == "t=v1", "read just now"
    now[0] = 0.1
    first, second = await asyncio.gather(cache.get("t", max_age=0.1), cache.get("t", max_age=0.1))
    assert (first, second) == ("t=v2", "t=v2")
    assert len(source.reads) == 2, "the two requests shared one read"
    assert await cache.get("t") == "t=v2"


async def test_close_waits_for_a_read_forgotten_while_under_way() -> None:
    source = Source()
    cache = FreshCache(source.load, seconds=SECONDS)
    source.gate = asyncio.Event()
    reading = asyncio.create_task(cache.get("t"))
    await _until(lambda: len(source.reads) == 1)
    cache.forget()
    closing = asyncio.create_task(cache.close())
    await asyncio.sleep(0.01)
    assert not closing.done(), "close returned with a read under way"
    source.gate.set()
    await closing
    assert await reading == "t=v1"
