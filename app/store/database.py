"""Engines, connection setup per dialect, and driver-error translation.

SQLite gets two engines: one writer connection whose transactions start with
``BEGIN IMMEDIATE`` (so a writer never fails on a lock upgrade) and a small
pool of readers; and the hot paths' own writer, a plain sqlite3 connection on
its own thread (:mod:`app.store.sqlite_writer`), which takes turns with the
writer engine so that only one of them writes at a time. PostgreSQL gets one
pool for everything.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from functools import partial
from typing import Any, Literal

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.domain.sealing import Keyring
from app.errors import StoreUnavailable
from app.store.sqlite_writer import SqliteWriter

SQLITE_BUSY_TIMEOUT_MS = 10_000


class Database:
    """The engines for one database URL. Build with :func:`open_database`."""

    def __init__(
        self,
        url: str,
        writer: AsyncEngine,
        reader: AsyncEngine,
        sqlite_writer: SqliteWriter | None = None,
        keyring: Keyring | None = None,
        *,
        owns_writer: bool = True,
        durable_commits: bool = True,
    ) -> None:
        self.url = url
        self.keyring = keyring or Keyring()  # seals the secrets stored here (app.store.sealed)
        self.writer = writer
        self.reader = reader
        self.sqlite_writer = sqlite_writer  # SQLite: the hot paths' writer
        self._owns_writer = owns_writer  # False: another Database's, closed with that one
        self.durable_commits = durable_commits  # whether a commit waits for the disk
        self.dialect = writer.dialect.name
        # Write transactions open or waiting for their turn (counted by
        # :meth:`writing`): the embedded worker steps aside for the API's
        # requests only while it has none (app.precedence).
        self.writes = 0

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on success, rolled back on error."""
        with self.writing(), translate_errors():
            async with self._writer_turn(), self.writer.begin() as conn:
                yield conn

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Count a write transaction of this Database (in :attr:`writes`) while
        the block runs: from before it waits for its turn to its end."""
        self.writes += 1
        try:
            yield
        finally:
            self.writes -= 1

    def _writer_turn(self) -> AbstractAsyncContextManager[None]:
        # SQLite: the writer engine's connection and the hot paths' never
        # write at the same time (app.store.sqlite_writer).
        return self.sqlite_writer.turn() if self.sqlite_writer else nullcontext()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        with translate_errors():
            async with self.reader.connect() as conn:
                yield conn

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self.sqlite_writer is not None and self._owns_writer:
            await self.sqlite_writer.close()
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


# How old a delivery worker's PostgreSQL plans may get (see open_database).
REPLAN_SECONDS = 60


def open_database(
    url: str,
    *,
    pool_size: int = 10,
    durable_commits: bool = True,
    worker: bool = False,
    keyring: Keyring | None = None,
    beside: Database | None = None,
) -> Database:
    """Engines for ``url``; ``keyring`` seals the secrets stored there (none: stored as they are).

    ``beside``: a Database of this process for the same SQLite file (the
    API's, for the embedded worker); the new one has engines of its own (an
    engine's connections belong to the event loop that opened them) and runs
    its hot transactions on that one's writer (:mod:`app.store.sqlite_writer`),
    each with its own ``synchronous``; the writer stays that one's to close.

    ``durable_commits=False`` is for a process that never acknowledges an
    event (``eventrelay worker``): its commits (claims, outcomes) may be lost
    to a power failure, which only means a delivery is made again, so they do
    not wait for the disk. Whatever accepts events keeps the default.

    Query plans on PostgreSQL (asyncpg prepares every statement, and
    PostgreSQL keeps a generic plan for a prepared statement once it has
    settled on one, however much the tables grow until the next ``ANALYZE``):

    * by default every execution is planned for its parameters and the
      tables' current size (``plan_cache_mode = force_custom_plan``), a few
      tens of µs for the API's statements;
    * ``worker=True`` (a delivery worker's own engine) keeps PostgreSQL's
      default plan cache, because planning the claim takes over a millisecond
      and a cycle may claim a single delivery, and instead never lets a plan
      grow old: a connection checked out more than ``REPLAN_SECONDS`` after
      its plans were made drops them first (``DISCARD PLANS``), and its next
      statements are planned again for the tables as they are then. Every hot
      statement's generic plan made at scale is index-served
      (tests/integration/test_hot_plans.py), so a plan made while a table was
      small lives at most that long. The connection itself is kept: replacing
      every connection of the pool at once, as they all age together, held
      the worker's cycles for tens of milliseconds a minute (a new server
      process and the driver's type lookups for each; BENCHMARKS.md, "The
      worker's connections kept").
    """
    if url.startswith("sqlite"):
        sync = "FULL" if durable_commits else "NORMAL"
        writer = _sqlite_engine(
            url, immediate=True, pool_size=1, synchronous=sync, reset_on_return=None
        )
        reader = _sqlite_engine(url, immediate=False, pool_size=4, synchronous=sync)
        cargs, cparams = writer.dialect.create_connect_args(writer.url)
        if beside is not None and beside.sqlite_writer is not None:
            hot, owned = beside.sqlite_writer, False
        else:
            hot, owned = SqliteWriter(partial(_sqlite_connect, cargs, cparams, sync)), True
        return Database(
            url, writer, reader, hot, keyring, owns_writer=owned, durable_commits=durable_commits
        )
    server_settings = {"plan_cache_mode": "auto" if worker else "force_custom_plan"}
    if not durable_commits:
        server_settings["synchronous_commit"] = "off"
    connect_args: dict[str, Any] = {
        "timeout": 5,
        "command_timeout": 30,
        "server_settings": server_settings,
    }
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    if worker:
        _replan_periodically(engine)
    return Database(url, engine, engine, keyring=keyring, durable_commits=durable_commits)


def _replan_periodically(engine: AsyncEngine) -> None:
    """Each connection of ``engine`` drops its cached plans when it is checked
    out ``REPLAN_SECONDS`` or more after they were made (its prepared
    statements stay: only their plans are made again)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _planned(_dbapi_connection: Any, record: Any) -> None:
        record.info["planned_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _replan(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        now = time.monotonic()
        if now - record.info.get("planned_at", now) >= REPLAN_SECONDS:
            try:
                dbapi_connection.run_async(lambda driver: driver.execute("DISCARD PLANS"))
            except Exception as exc:
                # A connection that cannot take it is lost: the pool opens another.
                raise sa_exc.DisconnectionError(str(exc)) from exc
            record.info["planned_at"] = now


def _sqlite_engine(
    url: str,
    *,
    immediate: bool,
    pool_size: int,
    synchronous: str,
    reset_on_return: Literal["rollback"] | None = "rollback",
) -> AsyncEngine:
    # The writer returns its connection without the pool's ROLLBACK, a hand-off
    # to aiosqlite's thread after every transaction: every use of it ends its
    # own transaction, through SQLAlchemy's begin() (Database.write).
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        pool_reset_on_return=reset_on_return,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_setup(dbapi_connection, synchronous)

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def _sqlite_setup(connection: Any, synchronous: str) -> None:
    """Every SQLite connection's settings: the engines' (SQLAlchemy's adapter
    of an aiosqlite connection) and the hot paths' writer's (plain sqlite3)."""
    # Take transaction control from the driver so BEGIN is ours to emit.
    connection.isolation_level = None
    cursor = connection.cursor()
    # The busy timeout first: switching a file to WAL waits for other
    # connections like any other lock (migrations leave files in WAL already).
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_connect(
    cargs: Sequence[Any], cparams: Mapping[str, Any], synchronous: str
) -> sqlite3.Connection:
    """The hot paths' writer connection, opened as the engines open theirs
    (the same file and URL options), used on the writer's thread only."""
    params = {**cparams, "check_same_thread": True, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    connection: sqlite3.Connection = sqlite3.connect(*cargs, **params)
    try:
        _sqlite_setup(connection, synchronous)
    except BaseException:
        connection.close()
        raise
    return connection


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sqlite3.OperationalError,  # from plain sqlite3 connections (app.store.sqlite_writer, driver)
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    OSError,
    asyncio.TimeoutError,
)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn "the database is not there" into :class:`StoreUnavailable` (503)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"the database is unavailable: {type(exc).__name__}") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated or _is_connection_error(exc):
            raise StoreUnavailable("the database connection was lost") from exc
        raise


# SQLSTATE classes that mean "the database is not there for us right now":
# connection exceptions, insufficient resources, operator intervention (shutdown,
# cannot connect now), and a database that refuses or lacks connections.
_UNAVAILABLE_CLASSES = ("08", "53", "57")
_UNAVAILABLE_STATES = frozenset({"55000", "3D000"})
_UNAVAILABLE_NAMES = (
    "ConnectionDoesNotExist",
    "CannotConnectNow",
    "ConnectionFailure",
    "AdminShutdown",
)


def _is_connection_error(exc: sa_exc.DBAPIError) -> bool:
    for cause in (exc.orig, getattr(exc.orig, "__cause__", None)):
        if cause is None:
            continue
        state = str(getattr(cause, "sqlstate", "") or "")
        if state.startswith(_UNAVAILABLE_CLASSES) or state in _UNAVAILABLE_STATES:
            return True
        if any(marker in type(cause).__name__ for marker in _UNAVAILABLE_NAMES):
            return True
    return False
