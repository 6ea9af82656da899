"""The SQLite writer (``app.store.sqlite_writer``): one sqlite3 connection on its
own thread, a transaction per hand-off, taking turns with ``Database.write``."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from app.errors import StoreUnavailable
from app.store import database as database_module
from app.store import driver, sqlite_writer
from app.store.database import Database, open_database
from app.store.sqlite_writer import SqliteWriter

ON_SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
async def scratch(db: Database) -> Database:
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE scratch (n INTEGER PRIMARY KEY, tag TEXT)"))
    return db


def _insert(conn: sqlite3.Connection, *numbers: int, tag: str = "writer") -> int:
    return conn.executemany(
        "INSERT INTO scratch (n, tag) VALUES (?, ?)", [(n, tag) for n in numbers]
    ).rowcount


async def _stored(db: Database) -> list[tuple[int, str]]:
    async with db.read() as conn:
        rows = await conn.execute(text("SELECT n, tag FROM scratch ORDER BY n"))
        return [(n, tag) for n, tag in rows]


def _writer(db: Database) -> SqliteWriter:
    assert db.sqlite_writer is not None
    return db.sqlite_writer


@ON_SQLITE
async def test_a_failure_mid_transaction_leaves_nothing(scratch: Database) -> None:
    def insert_then_conflict(conn: sqlite3.Connection) -> None:
        assert conn.in_transaction  # BEGIN IMMEDIATE came first
        _insert(conn, 1, 2)
        _insert(conn, 2)  # the primary key again

    with pytest.raises(sqlite3.IntegrityError):
        await _writer(scratch).transaction(insert_then_conflict)
    assert await _stored(scratch) == []
    # The connection is usable again, outside any transaction.
    assert await _writer(scratch).transaction(lambda conn: _insert(conn, 3)) == 1
    assert await _stored(scratch) == [(3, "writer")]


@ON_SQLITE
async def test_an_error_of_the_work_rolls_back_and_reaches_the_caller(scratch: Database) -> None:
    class Refused(Exception):
        pass

    def insert_then_raise(conn: sqlite3.Connection) -> None:
        _insert(conn, 1)
        raise Refused

    with pytest.raises(Refused):
        await driver.sqlite_write(scratch, insert_then_raise)  # not a database error: as is
    assert await _stored(scratch) == []


@ON_SQLITE
async def test_database_errors_become_store_unavailable(scratch: Database) -> None:
    with pytest.raises(StoreUnavailable):
        await driver.sqlite_write(scratch, lambda conn: conn.execute("SELECT * FROM nothing"))


@ON_SQLITE
async def test_a_transaction_that_breaks_its_connection_does_not_break_the_writer(
    scratch: Database,
) -> None:
    def close_then_raise(conn: sqlite3.Connection) -> None:
        _insert(conn, 1)
        conn.close()  # the rollback that follows fails as well
        raise RuntimeError("broken")

    with pytest.raises(sqlite3.ProgrammingError):
        await _writer(scratch).transaction(close_then_raise)
    assert await _writer(scratch).transaction(lambda conn: _insert(conn, 2)) == 1
    assert await _stored(scratch) == [(2, "writer")]


@ON_SQLITE
async def test_every_transaction_runs_on_the_one_writer_thread(scratch: Database) -> None:
    def where(conn: sqlite3.Connection) -> tuple[str, int, int]:
        return threading.current_thread().name, threading.get_ident(), id(conn)

    first, second = [await _writer(scratch).transaction(where) for _ in range(2)]
    assert first == second
    assert first[0] == "sqlite-writer"
    assert first[1] != threading.get_ident()


@ON_SQLITE
@pytest.mark.parametrize(("durable", "synchronous"), [(True, 2), (False, 1)])
async def test_the_connection_is_set_up_like_the_engines(
    database_url: str, durable: bool, synchronous: int
) -> None:
    db = open_database(database_url, durable_commits=durable)
    try:

        def pragmas(conn: sqlite3.Connection) -> list[object]:
            names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            return [conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names]

        expected = ["wal", synchronous, 1, database_module.SQLITE_BUSY_TIMEOUT_MS]
        assert await driver.sqlite_write(db, pragmas) == expected
    finally:
        await db.dispose()


@ON_SQLITE
async def test_a_database_beside_another_shares_its_writer_with_its_own_durability(
    scratch: Database, database_url: str
) -> None:
    """The embedded worker's Database: engines of its own, the API's writer (one
    writer per process), its commits not waiting for the disk, the API's still
    waiting; disposing of it leaves the API's writer running."""
    worker_db = open_database(database_url, durable_commits=False, beside=scratch)
    try:
        assert worker_db.sqlite_writer is scratch.sqlite_writer
        assert worker_db.writer is not scratch.writer

        def synchronous_and_thread(conn: sqlite3.Connection) -> tuple[int, int]:
            return conn.execute("PRAGMA synchronous").fetchone()[0], threading.get_ident()

        worker_side = await driver.sqlite_write(worker_db, synchronous_and_thread)
        api_side = await driver.sqlite_write(scratch, synchronous_and_thread)
        assert (worker_side[0], api_side[0]) == (1, 2)  # NORMAL, then FULL again
        assert worker_side[1] == api_side[1], "one writer thread for both"
        async with worker_db.write() as conn:  # its own engine takes turns with the writer
            await conn.execute(text("INSERT INTO scratch (n, tag) VALUES (1, 'engine')"))
    finally:
        await worker_db.dispose()
    assert _writer(scratch).running, "the API's writer outlives the worker's Database"
    assert await _writer(scratch).transaction(lambda conn: _insert(conn, 2)) == 1
    assert await _stored(scratch) == [(1, "engine"), (2, "writer")]


class _Recorded(sqlite3.Connection):
    """A connection that says whether it was closed (readable from any thread)."""

    was_closed = False

    def close(self) -> None:
        super().close()
        self.was_closed = True


async def test_close_closes_the_connection_and_stops_the_thread(tmp_path: Path) -> None:
    opened: list[_Recorded] = []

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(tmp_path / "w.db", factory=_Recorded, isolation_level=None)
        opened.append(connection)
        return connection

    writer = SqliteWriter(connect)
    assert not writer.running  # it starts with the first transaction
    await writer.transaction(lambda conn: conn.execute("CREATE TABLE t (n)"))
    assert writer.running
    await writer.close()
    assert not writer.running
    assert "sqlite-writer" not in [t.name for t in threading.enumerate()]
    assert [c.was_closed for c in opened] == [True]
    # Like an engine after dispose(): the next transaction starts afresh.
    await writer.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
    assert writer.running
    await writer.close()
    await writer.close()  # closing twice is harmless
    assert not writer.running
    assert [c.was_closed for c in opened] == [True, True]


@ON_SQLITE
async def test_close_waits_for_the_transaction_under_way(scratch: Database) -> None:
    writer = _writer(scratch)
    entered, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> int:
        entered.set()
        release.wait(10)
        return _insert(conn, 1)

    running = asyncio.create_task(writer.transaction(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    closing = asyncio.create_task(writer.close())
    done, _ = await asyncio.wait({closing}, timeout=0.2)
    assert not done
    release.set()
    assert await running == 1
    await closing
    assert not writer.running
    assert await _stored(scratch) == [(1, "writer")]


async def test_a_missing_database_is_unavailable_until_it_is_there(tmp_path: Path) -> None:
    directory = tmp_path / "later"
    db = open_database(f"sqlite+aiosqlite:///{directory}/eventrelay.db")
    try:
        for _ in range(2):  # the thread survives a failed connect
            with pytest.raises(StoreUnavailable):
                await driver.sqlite_write(db, lambda conn: None)
        directory.mkdir()
        assert await driver.sqlite_write(db, lambda conn: conn.execute("SELECT 1").fetchone())
    finally:
        await db.dispose()


@pytest.fixture
async def impatient(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    """A database whose connections give up at once on a held write lock: any
    two writes that overlapped would fail with "database is locked"."""
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 0)
    db = open_database(database_url)
    try:
        async with db.write() as conn:
            await conn.execute(text("CREATE TABLE scratch (n INTEGER PRIMARY KEY, tag TEXT)"))
        yield db
    finally:
        await db.dispose()


@ON_SQLITE
async def test_the_writer_and_database_write_take_turns(impatient: Database) -> None:
    async def engine_write(n: int) -> None:
        async with impatient.write() as conn:
            await conn.execute(text("INSERT INTO scratch VALUES (:n, 'engine')"), {"n": n})
            await asyncio.sleep(0)  # hold the transaction across a turn of the loop
            await conn.execute(text("UPDATE scratch SET tag = 'engine' WHERE n = :n"), {"n": n})

    async def writer_write(n: int) -> None:
        await driver.sqlite_write(impatient, lambda conn: _insert(conn, n))

    await asyncio.gather(
        *(engine_write(n) if n % 2 else writer_write(n) for n in range(60)),
    )
    stored = await _stored(impatient)
    assert stored == [(n, "engine" if n % 2 else "writer") for n in range(60)]


@ON_SQLITE
async def test_a_cancelled_caller_keeps_the_turn_until_its_transaction_ends(
    impatient: Database,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> int:
        _insert(conn, 1)
        entered.set()
        release.wait(10)
        return 1

    caller = asyncio.create_task(driver.sqlite_write(impatient, slow))
    assert await asyncio.to_thread(entered.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller

    async def engine_write() -> None:
        async with impatient.write() as conn:
            await conn.execute(text("INSERT INTO scratch VALUES (2, 'engine')"))

    after = asyncio.create_task(engine_write())
    done, _ = await asyncio.wait({after}, timeout=0.2)
    assert not done  # it waits for its turn (it would fail at once on the lock)
    release.set()
    await after
    # The transaction under way when its caller gave up was finished, not abandoned.
    assert await _stored(impatient) == [(1, "writer"), (2, "engine")]


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


@ON_SQLITE
async def test_an_urgent_transaction_goes_ahead_of_those_waiting(impatient: Database) -> None:
    writer = _writer(impatient)
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def under_way(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(10)
        order.append("under way")

    def record(name: str) -> Callable[[sqlite3.Connection], None]:
        return lambda conn: order.append(name)

    async def engine_write() -> None:
        async with impatient.write() as conn:
            await conn.execute(text("INSERT INTO scratch VALUES (1, 'engine')"))
            order.append("engine")

    holder = asyncio.create_task(driver.sqlite_write(impatient, under_way))
    assert await asyncio.to_thread(entered.wait, 10)
    cycle = asyncio.create_task(driver.sqlite_write(impatient, record("cycle")))
    await _until(lambda: len(writer._turn._waiting[1]) == 1)
    engine = asyncio.create_task(engine_write())
    await _until(lambda: len(writer._turn._waiting[1]) == 2)
    # An urgent caller that gives up while waiting takes nothing with it.
    gone = asyncio.create_task(driver.sqlite_write(impatient, record("gone"), urgent=True))
    await _until(lambda: len(writer._turn._waiting[0]) == 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert not writer._turn._waiting[0]
    flush = asyncio.create_task(driver.sqlite_write(impatient, record("flush"), urgent=True))
    await _until(lambda: len(writer._turn._waiting[0]) == 1)
    release.set()
    await asyncio.gather(holder, cycle, engine, flush)
    assert order == ["under way", "flush", "cycle", "engine"]
    # Nobody holds the turn now: a write goes at once.
    await asyncio.wait_for(driver.sqlite_write(impatient, record("after")), 5)


@ON_SQLITE
async def test_the_thread_starts_the_next_transaction_without_the_loop(scratch: Database) -> None:
    """A busy event loop does not hold the writer idle between two transactions:
    the thread hands the turn to the next one waiting and runs it at once."""
    writer = _writer(scratch)
    entered, release, second_ran = threading.Event(), threading.Event(), threading.Event()

    def first(conn: sqlite3.Connection) -> int:
        entered.set()
        release.wait(10)
        return _insert(conn, 1)

    def second(conn: sqlite3.Connection) -> int:
        second_ran.set()
        return _insert(conn, 2)

    running = asyncio.create_task(writer.transaction(first))
    assert await asyncio.to_thread(entered.wait, 10)
    waiting = asyncio.create_task(writer.transaction(second))
    await _until(lambda: len(writer._turn._waiting[1]) == 1)
    release.set()
    # The loop is held up here (a busy loop): the second runs all the same.
    assert second_ran.wait(10), "the second transaction waited for the event loop"
    assert await asyncio.gather(running, waiting) == [1, 1]
    assert await _stored(scratch) == [(1, "writer"), (2, "writer")]


def _wal_writer(path: Path) -> SqliteWriter:
    """A writer on a file of its own in WAL mode, as the store opens one."""

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        return connection

    return SqliteWriter(connect)


async def test_commits_leave_the_checkpoints_to_a_thread_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No commit of the writer's runs a checkpoint (one took 60 ms of a cycle,
    which the ingest waited for); the checkpoint thread keeps the write-ahead
    log from growing: after a checkpoint the log starts again from its
    beginning, so writing as much again does not make it longer."""
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_SECONDS", 0.05)
    path = tmp_path / "w.db"

    writer = _wal_writer(path)
    blob = b"x" * 100_000

    async def write_4mb() -> None:
        for _ in range(40):
            await writer.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (blob,)))

    try:
        await writer.transaction(lambda conn: conn.execute("CREATE TABLE t (b BLOB)"))
        autocheckpoint = await writer.transaction(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == 0
        await write_4mb()
        done = writer.checkpoints.done
        await _until(lambda: writer.checkpoints.done >= done + 2)  # one after the writes
        grown = (tmp_path / "w.db-wal").stat().st_size
        assert grown > 3_000_000
        await write_4mb()
        assert (tmp_path / "w.db-wal").stat().st_size < grown * 1.5
    finally:
        await writer.close()
    assert "sqlite-checkpoints" not in [t.name for t in threading.enumerate()]


async def test_the_log_is_synced_soon_after_a_commit_that_did_not_wait_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-durable commit (the embedded worker's) is on disk within moments,
    not at the next checkpoint or durable commit, which would otherwise wait
    for all of them: the write-ahead log itself is fsynced. A durable commit
    syncs itself and asks for nothing more."""
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_SECONDS", 0.05)
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = tmp_path / "w.db"

    writer = _wal_writer(path)
    try:
        await writer.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
        done = writer.checkpoints.done
        await _until(lambda: writer.checkpoints.done >= done + 2)
        assert writer.checkpoints.syncs == 0  # durable commits only
        await writer.transaction(
            lambda conn: conn.execute("INSERT INTO t VALUES (1)"), durable=False
        )
        await _until(lambda: writer.checkpoints.syncs == 1)
        assert synced == [str(path) + "-wal"]
    finally:
        await writer.close()


async def test_a_database_without_a_log_on_disk_is_not_synced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_SECONDS", 0.05)
    writer = SqliteWriter(lambda: sqlite3.connect(":memory:", isolation_level=None))
    try:
        await writer.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
        await writer.transaction(
            lambda conn: conn.execute("INSERT INTO t VALUES (1)"), durable=False
        )
        done = writer.checkpoints.done
        await _until(lambda: writer.checkpoints.done >= done + 2)  # both after the commit
        assert writer.checkpoints.syncs == 0
    finally:
        await writer.close()
