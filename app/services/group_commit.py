"""Group commit: requests that arrive while a transaction is being written
share the next one, so many requests pay for one fsync.

A flush takes everything queued (up to ``max_batch`` items) and hands it to
one call of ``flush``; each submitter gets its own item's result or the
exception that sank the whole flush. With a tracer, each flush is a span that
the spans of the requests it carries are linked to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from app.errors import ServiceUnavailable
from app.tracing import IngestSpan, Tracer

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R]]]
# An item, the future its submitter awaits, and the submitter's span.
_Queued = tuple[T, "asyncio.Future[R]", IngestSpan | None]


class GroupCommitter(Generic[T, R]):
    def __init__(
        self,
        flush: Flush[T, R],
        *,
        writers: int = 1,
        max_batch: int = 512,
        on_flush: Callable[[int], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._flush = flush
        self._tracer = tracer
        self._writers = writers
        self._max_batch = max_batch
        self._on_flush = on_flush
        # ``None`` tells a writer to exit once everything queued before it is written.
        self._queue: asyncio.Queue[_Queued[T, R] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._run(), name=f"group-commit-{i}") for i in range(self._writers)
        ]

    async def stop(self) -> None:
        """Write everything queued (a flush under way is never cut short), then stop."""
        self._closing = True
        for _ in self._tasks:
            self._queue.put_nowait(None)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def submit(self, item: T, span: IngestSpan | None = None) -> R:
        """Store ``item`` with the next flush; ``span``, the request's, is linked to it."""
        if self._closing:
            raise ServiceUnavailable("eventrelay is shutting down")
        if not self._tasks:
            raise RuntimeError("the group committer is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, span))  # unbounded: never waits
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch and not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is None:
                    stop = True
                    break
                batch.append(queued)
            await self._flush_batch(batch)
            if stop:
                return

    async def _flush_batch(self, batch: list[_Queued[T, R]]) -> None:
        if self._on_flush is not None:
            self._on_flush(len(batch))
        try:
            if self._tracer is None:
                results = await self._flush([item for item, _, _ in batch])
            else:
                results = await self._traced_flush(self._tracer, batch)
        except Exception as exc:  # every submitter learns why its item was not stored
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, future, _ in batch:
                if not future.done():
                    future.cancel()
            raise
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _traced_flush(self, tracer: Tracer, batch: list[_Queued[T, R]]) -> Sequence[R]:
        with tracer.group_commit(len(batch)) as commit:
            for _, _, span in batch:
                if span is not None:
                    span.link(commit)
            return await self._flush([item for item, _, _ in batch])
