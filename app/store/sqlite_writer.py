"""SQLite's hot write transactions, each one hand-off to a thread of our own.

The ingest flush and the delivery worker's cycle each run a whole transaction
(``BEGIN IMMEDIATE`` … ``COMMIT``) with many statements. Through SQLAlchemy's
aiosqlite adapter every statement is several hand-offs to aiosqlite's thread,
and every hand-off waits for the busy event loop to come round (BENCHMARKS.md),
so :class:`SqliteWriter` keeps one plain :mod:`sqlite3` connection on one
thread and runs a transaction there as a single call: ``await
writer.transaction(work)`` queues ``work``, the thread runs it between
``BEGIN IMMEDIATE`` and ``COMMIT`` (rolling back whatever it raises), and
hands the result back with ``loop.call_soon_threadsafe``.

The other writes (subscriptions, tokens, DLQ, leases, retention…) stay on
SQLAlchemy's writer engine, :meth:`app.store.database.Database.write`: they
compose Core statements over several awaits, and running those on this
thread would mean a hand-off per statement again, which is what aiosqlite
does already. The two writer connections of a process never hold or wait for
SQLite's write lock at the same time: ``Database.write`` takes the writer's
:meth:`~SqliteWriter.turn` for its whole transaction, and every transaction
here holds the same turn from before it is queued until the thread has
finished it, even if its caller is cancelled meanwhile. The turn is first
come, first served, except that an *urgent* transaction (the ingest flush,
whose caller waits for its 202) goes ahead of every other waiting one: a
flush waits for the transaction under way, not also for a delivery cycle or
a lease renewal queued before it. A cycle cannot be starved by it: the next
flush is gathered only after this one has finished, by when the cycle has
the turn. A retention batch or a subscription change waits at most for one
flush and what is queued ahead of it, as when the two shared one pooled
connection.

The connection is opened on the thread by the first transaction (so that an
unreachable database is an error of that transaction, translated to
``StoreUnavailable`` by the caller like any other), opened again after a
failure that left it unusable, and closed with the thread by :meth:`close`;
the next transaction after that starts a new thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

# One queued call: what to run on the thread (``None``: close and stop), and
# the future for its outcome.
_Job = tuple[Callable[[sqlite3.Connection], Any] | None, asyncio.Future[Any]]


class _Turn:
    """A lock handed to waiters in order, urgent ones first."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),
            deque(),
        )

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._held and not any(self._waiting):
            self._held = True
            return
        queue = self._waiting[0 if urgent else 1]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                with suppress(ValueError):
                    queue.remove(future)
            else:  # handed the turn just as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        for queue in self._waiting:
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)  # the turn goes on, held
                    return
        self._held = False


class SqliteWriter:
    """One sqlite3 connection on its own thread; ``connect`` opens it (on that thread)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._open = connect
        self._turn = _Turn()
        self._thread: tuple[threading.Thread, SimpleQueue[_Job]] | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is up (it starts with the first transaction)."""
        return self._thread is not None and self._thread[0].is_alive()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the writer: no transaction runs here until the block is left.

        For a write transaction on another connection to the same file
        (:meth:`app.store.database.Database.write`).
        """
        await self._turn.acquire()
        try:
            yield
        finally:
            self._turn.release()

    async def transaction(
        self, work: Callable[[sqlite3.Connection], T], *, urgent: bool = False
    ) -> T:
        """``work(connection)`` between ``BEGIN IMMEDIATE`` and ``COMMIT``, on the thread;
        ``urgent``: ahead of the transactions waiting for their turn.

        Anything ``work`` raises rolls the transaction back and is raised here;
        so are sqlite3's own errors (untranslated). ``work`` must not touch the
        event loop. The connection is in autocommit mode: ``BEGIN`` is ours.
        """
        await self._turn.acquire(urgent=urgent)
        if self._thread is None:
            jobs: SimpleQueue[_Job] = SimpleQueue()
            thread = threading.Thread(
                target=self._serve, args=(jobs,), name="sqlite-writer", daemon=True
            )
            try:
                thread.start()
            except BaseException:
                self._turn.release()
                raise
            self._thread = thread, jobs
        result: T = await self._queue(self._thread[1], partial(_in_transaction, work))
        return result

    async def close(self) -> None:
        """Close the connection and stop the thread, once the transaction under
        way (if any) is done. The next transaction starts them again."""
        await self._turn.acquire()
        if self._thread is None:
            self._turn.release()
            return
        (thread, jobs), self._thread = self._thread, None
        await self._queue(jobs, None)
        thread.join()  # it has handed back its last outcome: this is its return

    async def _queue(
        self, jobs: SimpleQueue[_Job], work: Callable[[sqlite3.Connection], Any] | None
    ) -> Any:
        """Queue ``work`` while holding the turn; the thread gives the turn back
        when it has finished (:meth:`_settle`), not this coroutine: cancelled,
        it would let another transaction begin while this one still runs."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        jobs.put((work, future))
        return await future

    def _serve(self, jobs: SimpleQueue[_Job]) -> None:
        connection: sqlite3.Connection | None = None
        while True:
            work, future = jobs.get()
            outcome, error = None, None
            try:
                if work is None:
                    if connection is not None:
                        connection.close()
                else:
                    connection = connection or self._open()
                    outcome = work(connection)
            except BaseException as exc:  # every outcome goes to the caller
                error = exc
                connection = _still_usable(connection)
            self._hand_back(future, outcome, error)
            if work is None:
                return

    def _hand_back(
        self, future: asyncio.Future[Any], outcome: Any, error: BaseException | None
    ) -> None:
        # A closed loop (RuntimeError) has nobody waiting for this any more.
        with suppress(RuntimeError):
            future.get_loop().call_soon_threadsafe(self._settle, future, outcome, error)

    def _settle(
        self, future: asyncio.Future[Any], outcome: Any, error: BaseException | None
    ) -> None:
        self._turn.release()
        if future.done():  # its caller was cancelled
            return
        if error is None:
            future.set_result(outcome)
        else:
            future.set_exception(error)


def _in_transaction(work: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection) -> T:
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    return result


def _still_usable(connection: sqlite3.Connection | None) -> sqlite3.Connection | None:
    """``connection`` after a failure, or ``None`` to open a new one: if the
    rollback failed too, a connection left in its transaction would refuse
    every ``BEGIN`` from then on."""
    if connection is None:
        return None
    try:
        if not connection.in_transaction:
            return connection
        connection.close()
    except sqlite3.Error:
        pass  # closed already
    return None
