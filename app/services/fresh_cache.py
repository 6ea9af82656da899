"""A short-lived cache whose entries in use are read again before they expire.

Tokens and tenants are cached for a second (README, "Tokens", "Tenant
caches"): a change made in another process takes effect here within that
second. A client that sends once a second would find its entries expired on
every request, and each request would read them again on the way in, through
an event loop that a busy worker keeps late. So an entry that has been used
recently is read again in the background when three quarters of its life have
passed; the request that comes next finds the fresh one.

The bound on staleness is kept: an entry is served until one lifetime after
its read *began*, never longer, whether a request or a refresh read it. If a
refresh has not finished by then, the next request waits for it (it shares
the read under way, as requests do when an entry expires under load).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from contextlib import suppress
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# When a used entry is read again, as a share of its lifetime.
REFRESH_AT = 0.75
# How long after its last use an entry is still kept fresh, in lifetimes: two,
# so that a client sending every second keeps its entries fresh even with a
# late request now and then.
KEEP_WARM = 2.0


class Cached(Generic[V]):
    """One entry: its ``value``, kept until ``expires``, last ``used`` then."""

    __slots__ = ("expires", "used", "value")

    def __init__(self, value: V, expires: float, used: float) -> None:
        self.value = value
        self.expires = expires
        self.used = used


class FreshCache(Generic[K, V]):
    """``load(key)``'s answers, each kept ``seconds`` from when its read began."""

    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        *,
        seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._seconds = seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, Cached[V]] = {}
        self._reads: dict[K, asyncio.Future[V]] = {}
        # Every read not yet settled, forgotten ones too: close() waits for them.
        self._unsettled: set[asyncio.Future[V]] = set()
        self._generation = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def hit(self, key: K) -> Cached[V] | None:
        """The entry for ``key`` if it is still valid (and now used), else None."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or entry.expires <= now:
            return None
        entry.used = now
        return entry

    async def get(self, key: K, *, max_age: float | None = None) -> V:
        """The cached answer for ``key`` (one whose read began less than
        ``max_age`` seconds ago, if given), or a new read (shared with any
        under way)."""
        entry = self.hit(key)
        if entry is not None and (
            max_age is None or self._clock() - (entry.expires - self._seconds) < max_age
        ):
            return entry.value
        return await asyncio.shield(self._read(key, used=self._clock()))

    def forget(self, key: K | None = None) -> None:
        """A change in this process: ``key`` (None: every key) is read again on
        its next use, and no read begun before now is stored."""
        self._generation += 1
        if key is None:
            self._entries.clear()
            self._reads.clear()
        else:
            self._entries.pop(key, None)
            self._reads.pop(key, None)

    async def close(self) -> None:
        """No more background reads; waits for those under way, so that none
        outlives the database it reads (at shutdown)."""
        self._closed = True
        await asyncio.gather(*self._unsettled, return_exceptions=True)

    def _read(self, key: K, used: float) -> asyncio.Future[V]:
        # One read per key at a time: when an entry expires under load, the
        # requests in flight share one query instead of stampeding.
        pending = self._reads.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._store(key, used))
            self._reads[key] = pending
            self._unsettled.add(pending)
            pending.add_done_callback(lambda done: self._settled(key, done))
        return pending

    async def _store(self, key: K, used: float) -> V:
        generation, began = self._generation, self._clock()
        value = await self._load(key)
        if generation == self._generation:  # nothing was forgotten meanwhile
            old = self._entries.get(key)
            if old is not None:  # used while this read was under way
                used = max(used, old.used)
            elif len(self._entries) >= self._max_entries:
                self._entries.clear()
            entry = Cached(value, began + self._seconds, used)
            self._entries[key] = entry
            asyncio.get_running_loop().call_later(
                self._seconds * REFRESH_AT, self._refresh, key, entry
            )
        return value

    def _settled(self, key: K, done: asyncio.Future[V]) -> None:
        self._unsettled.discard(done)
        if self._reads.get(key) is done:
            del self._reads[key]
        # A refresh nobody waited for: its failure is the next request's to see.
        if not done.cancelled():
            done.exception()

    def _refresh(self, key: K, entry: Cached[V]) -> None:
        if self._closed or self._entries.get(key) is not entry:
            return  # replaced or forgotten since
        if self._clock() - entry.used > self._seconds * KEEP_WARM:
            return  # not used lately: let it expire
        with suppress(RuntimeError):  # the loop is closing
            self._read(key, used=entry.used)
