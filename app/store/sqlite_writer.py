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
here holds the same turn from when it starts on the thread until the thread
has finished it, even if its caller is cancelled meanwhile. The turn is first
come, first served, except that an *urgent* transaction (the ingest flush,
whose caller waits for its 202) goes ahead of every other waiting one: a
flush waits for the transaction under way, not also for a delivery cycle or
a lease renewal queued before it. The thread hands the turn on itself: when
the next waiting transaction is one of its own, it starts that one as soon
as it has finished the last, without waiting for the event loop to come
round (twice: to hand the turn over, then to queue the work) as a busy
delivery worker's loop makes every hand-off wait. A cycle cannot be starved by it: the next
flush is gathered only after this one has finished, by when the cycle has
the turn. A retention batch or a subscription change waits at most for one
flush and what is queued ahead of it, as when the two shared one pooled
connection.

Its connection never checkpoints the write-ahead log on a commit (SQLite's
default runs a checkpoint, with an fsync of the database file, in the commit
that grows the log past 1,000 pages: 60 ms once in a delivery cycle, which
every ingest flush then waited for). A thread of its own,
:class:`Checkpoints`, runs a passive checkpoint every ``CHECKPOINT_SECONDS``
while the writer runs: it takes no lock a writer waits for, and the log
starts again from its beginning at the first commit after a complete one.
Between checkpoints the same thread syncs the log to disk within
``LOG_SYNC_SECONDS`` of a commit that did not wait for the disk (the
embedded worker's): a durable commit (an ingest flush) syncs the log, and
with it every commit not yet on disk, so without this it would wait for up
to a quarter of a second of the worker's writes.

The connection is opened on the thread by the first transaction (so that an
unreachable database is an error of that transaction, translated to
``StoreUnavailable`` by the caller like any other), opened again after a
failure that left it unusable, and closed with the thread by :meth:`close`;
the next transaction after that starts a new thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 0.25
LOG_SYNC_SECONDS = 0.01

_Work = Callable[[sqlite3.Connection], Any]


@dataclass(eq=False, slots=True)
class _Waiter:
    """One wait for the turn, and once it has the turn, what the thread runs:
    ``work`` (``None``: nothing for the thread, a transaction on another
    connection; queued on the thread, close and stop), and the future its
    caller awaits."""

    future: asyncio.Future[Any]
    work: _Work | None = None


class _Turn:
    """The writer's turn: held by one transaction at a time and handed to the
    waiters in order, urgent ones first. Shared by the event loop and the
    writer's thread: the thread hands it on when it finishes a transaction, the
    loop when a turn held for another connection ends."""

    def __init__(self, start: Callable[[_Waiter], None]) -> None:
        self._start = start  # queue a waiter's work on the thread (any thread)
        self._lock = threading.Lock()
        self._held = False
        self._waiting: tuple[deque[_Waiter], deque[_Waiter]] = (deque(), deque())

    def enter(self, waiter: _Waiter, *, urgent: bool = False) -> bool:
        """Take the turn for ``waiter`` if it is free (its work, if any, then
        queued on the thread): True; else wait in line: False."""
        with self._lock:
            if self._held or any(self._waiting):
                self._waiting[0 if urgent else 1].append(waiter)
                return False
            self._held = True
        if waiter.work is not None:
            self._start(waiter)
        return True

    def withdraw(self, waiter: _Waiter) -> bool:
        """Leave the line (a caller cancelled); False if ``waiter`` had the turn already."""
        with self._lock:
            for queue in self._waiting:
                with suppress(ValueError):
                    queue.remove(waiter)
                    return True
        return False

    def release(self) -> None:
        """Hand the turn to the next waiter: its work queued on the thread, or
        (waiting on the loop) its future granted there."""
        with self._lock:
            waiter = next((queue.popleft() for queue in self._waiting if queue), None)
            if waiter is None:
                self._held = False
                return
        if waiter.work is not None:
            self._start(waiter)
            return
        with suppress(RuntimeError):  # a closed loop: nobody waits for it any more
            waiter.future.get_loop().call_soon_threadsafe(self._grant, waiter.future)

    def _grant(self, future: asyncio.Future[Any]) -> None:
        if future.done():  # its caller gave up before the turn came: pass it on
            self.release()
        else:
            future.set_result(None)


class SqliteWriter:
    """One sqlite3 connection on its own thread; ``connect`` opens it (on that thread)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._open = connect
        self._turn = _Turn(self._start)
        self._thread: tuple[threading.Thread, SimpleQueue[_Waiter]] | None = None
        self.checkpoints = Checkpoints(connect)

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
        await self._wait(_Waiter(asyncio.get_running_loop().create_future()))
        try:
            yield
        finally:
            self._turn.release()

    async def transaction(
        self, work: Callable[[sqlite3.Connection], T], *, urgent: bool = False, durable: bool = True
    ) -> T:
        """``work(connection)`` between ``BEGIN IMMEDIATE`` and ``COMMIT``, on the thread;
        ``urgent``: ahead of the transactions waiting for their turn; ``durable``:
        the commit waits for the disk (``synchronous = FULL``, else ``NORMAL``).

        Anything ``work`` raises rolls the transaction back and is raised here;
        so are sqlite3's own errors (untranslated). ``work`` must not touch the
        event loop. The connection is in autocommit mode: ``BEGIN`` is ours.
        A caller cancelled while its transaction waits for the turn takes it out
        of the line; once started, the transaction runs to its end.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        unsynced = None if durable else self.checkpoints.unsynced
        waiter = _Waiter(future, partial(_in_transaction, work, durable, unsynced))
        self._turn.enter(waiter, urgent=urgent)
        try:
            return await future
        except asyncio.CancelledError:
            self._turn.withdraw(waiter)
            raise

    async def close(self) -> None:
        """Close the connection and stop the thread, once the transaction under
        way (if any) is done. The next transaction starts them again."""
        await self._wait(_Waiter(asyncio.get_running_loop().create_future()))
        try:
            if self._thread is None:
                return
            (thread, jobs), self._thread = self._thread, None
            stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            jobs.put(_Waiter(stopped))
            await stopped
            thread.join()  # it has handed back its last outcome: this is its return
            await asyncio.to_thread(self.checkpoints.stop)
        finally:
            self._turn.release()

    async def _wait(self, waiter: _Waiter) -> None:
        """Wait on the loop for the turn (no work for the thread)."""
        if self._turn.enter(waiter):
            return
        try:
            await waiter.future
        except asyncio.CancelledError:
            if not self._turn.withdraw(waiter) and not waiter.future.cancelled():
                self._turn.release()  # granted just as it was cancelled: pass it on
            raise

    def _start(self, waiter: _Waiter) -> None:
        """Queue ``waiter``'s work on the thread, starting the thread if there is
        none (the first transaction, or the first after :meth:`close`). Called
        by whoever hands ``waiter`` the turn, so never twice at once."""
        if self._thread is None:
            jobs: SimpleQueue[_Waiter] = SimpleQueue()
            thread = threading.Thread(
                target=self._serve, args=(jobs,), name="sqlite-writer", daemon=True
            )
            try:
                thread.start()
            except BaseException as exc:  # nothing to run it on: the caller is told
                _hand_back(waiter.future, None, exc)
                self._turn.release()
                return
            self._thread = thread, jobs
            self.checkpoints.start()
        self._thread[1].put(waiter)

    def _serve(self, jobs: SimpleQueue[_Waiter]) -> None:
        connection: sqlite3.Connection | None = None
        while True:
            job = jobs.get()
            work, future = job.work, job.future
            outcome, error = None, None
            try:
                if work is None:
                    if connection is not None:
                        connection.close()
                else:
                    connection = connection or _no_checkpoints(self._open())
                    outcome = work(connection)
            except BaseException as exc:  # every outcome goes to the caller
                error = exc
                connection = _still_usable(connection)
            _hand_back(future, outcome, error)
            if work is None:
                return
            self._turn.release()


def _hand_back(future: asyncio.Future[Any], outcome: Any, error: BaseException | None) -> None:
    # A closed loop (RuntimeError) has nobody waiting for this any more.
    with suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(_settle, future, outcome, error)


def _settle(future: asyncio.Future[Any], outcome: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(outcome)
    else:
        future.set_exception(error)


class Checkpoints:
    """Passive checkpoints of the write-ahead log every ``CHECKPOINT_SECONDS``,
    and the log synced within ``LOG_SYNC_SECONDS`` of a commit that did not
    wait for the disk (:meth:`unsynced`), on a thread and connection of their
    own, from :meth:`start` to :meth:`stop`."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._open = connect
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._unsynced = threading.Event()
        self.done = 0  # checkpoints run (read by the tests)
        self.syncs = 0  # log syncs between them (read by the tests)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._unsynced.clear()  # set by the last stop() to wake its thread
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the checkpoint or sync under way, if any (blocks until then)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._unsynced.set()
            thread.join()

    def unsynced(self) -> None:
        """A commit did not wait for the disk: sync the log soon (from any thread)."""
        self._unsynced.set()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        wal: str | None = None
        failing = False
        due = time.monotonic() + CHECKPOINT_SECONDS
        try:
            while not self._stopping.is_set():
                unsynced = self._unsynced.wait(max(0.0, due - time.monotonic()))
                if unsynced:
                    # The commits of the next moment share the sync.
                    if self._stopping.wait(LOG_SYNC_SECONDS):
                        break
                    self._unsynced.clear()
                try:
                    if connection is None:
                        connection = self._open()
                        wal = _log_file(connection)
                    if unsynced and wal is not None:
                        _sync(wal)
                        self.syncs += 1
                    if time.monotonic() >= due:
                        due = time.monotonic() + CHECKPOINT_SECONDS
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        self.done += 1
                    failing = False
                except (sqlite3.Error, OSError):
                    if not failing:  # once, not a hundred times a second
                        log.exception("checkpointing or syncing the SQLite write-ahead log failed")
                    failing, connection = True, _still_usable(connection)
        finally:
            if connection is not None:
                connection.close()


def _log_file(connection: sqlite3.Connection) -> str | None:
    """The database's write-ahead log (``<file>-wal``, as SQLite names it); None
    for an in-memory or temporary database."""
    path = next(row[2] for row in connection.execute("PRAGMA database_list") if row[1] == "main")
    return path + "-wal" if path else None


def _sync(path: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # no log on disk: nothing to sync
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _no_checkpoints(connection: sqlite3.Connection) -> sqlite3.Connection:
    """``connection`` with no checkpoint at its commits (:class:`Checkpoints` runs them)."""
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    return connection


# In WAL mode a FULL commit syncs the log, and with it every commit before it:
# a NORMAL one (the embedded worker's claims and outcomes) is on disk by the
# next FULL one (an ingest flush), the next log sync or the next checkpoint,
# whichever is first (:class:`Checkpoints`).
_SYNCHRONOUS = {True: "PRAGMA synchronous = FULL", False: "PRAGMA synchronous = NORMAL"}


def _in_transaction(
    work: Callable[[sqlite3.Connection], T],
    durable: bool,
    unsynced: Callable[[], None] | None,
    connection: sqlite3.Connection,
) -> T:
    connection.execute(_SYNCHRONOUS[durable])
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    if unsynced is not None:
        unsynced()
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
