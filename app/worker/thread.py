"""``eventrelay serve``'s embedded delivery worker, on a thread and event loop
of its own.

On one event loop with the API, every step of a request waited behind the
callbacks a busy worker had queued in the same turn of the loop (its
attempts' responses, a cycle's claim turned into tasks). On its own loop the
worker's callbacks no longer queue in front of the API's. The two threads
still share the interpreter's lock: a thread that wants it waits up to the
switch interval for the holder to give it up, and ``eventrelay serve``
shortens that from 5 to 0.5 ms (``app.cli.server.SWITCH_INTERVAL_SECONDS``).
With both, another tenant's p99 under a busy worker fell on SQLite (mean
32.9 to 25.6 ms over a sitting's runs); the thread alone did not move it
(BENCHMARKS.md, "Fairness between tenants"). And while the API has a request
in flight, the worker's thread steps aside for it (:mod:`app.precedence`).

:class:`WorkerThread` builds its database and its worker on that thread (an
engine's connections belong to the loop that opened them), and passes the
services' wake-ups over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from app.store.database import Database
from app.worker.worker import DeliveryWorker

# How long a failed start waits for the threads it started to end.
SETTLE_SECONDS = 2.0


def _join(threads: set[threading.Thread]) -> None:
    """Wait (up to SETTLE_SECONDS in all) for ``threads`` to end. A database
    driver may run a connection on a thread of its own (aiosqlite does) that
    hands a failed connection's last result to this loop after the failure was
    raised: the loop must not close before it has. Blocking the loop is fine
    here: it has nothing else to do, and a hand-over only queues a callback."""
    deadline = time.monotonic() + SETTLE_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


class WorkerThread:
    """A :class:`DeliveryWorker` on its own thread and event loop, from
    :meth:`start` to :meth:`stop`; the wake-ups may be called from any thread."""

    def __init__(
        self,
        open_db: Callable[[], Database],
        build: Callable[[Database], DeliveryWorker],
        loop_factory: Callable[[], asyncio.AbstractEventLoop],
    ) -> None:
        """``open_db`` and ``build`` run on the thread; ``loop_factory`` makes its
        loop (the kind the API runs on: ``type(asyncio.get_running_loop())``)."""
        self._open_db = open_db
        self._build = build
        self._loop_factory = loop_factory
        self._thread: threading.Thread | None = None
        self._running: tuple[asyncio.AbstractEventLoop, DeliveryWorker, asyncio.Event] | None = None

    async def start(self) -> None:
        """Start the thread; returns once its worker has started (or raises what
        stopped it)."""
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="delivery-worker", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(started)

    async def stop(self) -> None:
        """Stop the worker as :meth:`DeliveryWorker.stop` does, and end the thread."""
        running, self._running = self._running, None
        if running is not None:
            loop, _, stopping = running
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def wake(self) -> None:
        running = self._running
        if running is not None:
            running[1].stop_stepping_aside()  # its thread may be waiting, off its loop
        self._call(DeliveryWorker.wake)

    def subscription_changed(self, subscription_id: str) -> None:
        self._call(DeliveryWorker.subscription_changed, subscription_id)

    def remove_tenants(self) -> None:
        self._call(DeliveryWorker.remove_tenants)

    def _call(self, method: Callable[..., None], *args: str) -> None:
        running = self._running
        if running is not None:
            loop, worker, _ = running
            loop.call_soon_threadsafe(method, worker, *args)

    def _serve(self, started: Future[None]) -> None:
        with asyncio.Runner(loop_factory=self._loop_factory) as runner:
            runner.run(self._main(started))

    async def _main(self, started: Future[None]) -> None:
        db: Database | None = None
        before = set(threading.enumerate())
        try:
            db = self._open_db()
            worker = self._build(db)
            await worker.start()
        except BaseException as exc:
            if db is not None:
                await db.dispose()
            _join(set(threading.enumerate()) - before)
            started.set_exception(exc)
            return
        stopping = asyncio.Event()
        self._running = asyncio.get_running_loop(), worker, stopping
        started.set_result(None)
        try:
            await stopping.wait()
            await worker.stop()
        finally:
            await db.dispose()
