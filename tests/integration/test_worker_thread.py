"""The embedded worker on a thread and event loop of its own
(:class:`app.worker.thread.WorkerThread`): it delivers while the API's loop is
busy, hears the API's wake-ups across the threads, steps aside while the API
has a request in flight (:mod:`app.precedence`), and a worker that cannot
start says so from ``start``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import text

from app.domain.events import NewEvent
from app.errors import StoreUnavailable
from app.metrics import Metrics
from app.precedence import RequestsFirst
from app.store.database import Database, open_database
from app.worker.thread import WorkerThread
from app.worker.worker import DeliveryWorker, WorkerConfig
from tests.integration.conftest import DeliveryKit

RARE_POLL_SECONDS = 30.0  # a delivery sooner than this was woken, not polled for
DEADLINE_SECONDS = 10.0


class _Hooks(ThreadingHTTPServer):
    """A webhook receiver on threads of its own: it answers while the test's loop is blocked."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.bodies: list[bytes] = []
        self.arrived = threading.Event()
        self.failures = 0  # how many requests to answer 500 first

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"


class _Answer(BaseHTTPRequestHandler):
    server: _Hooks

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        failing = self.server.failures > 0
        self.server.failures -= failing
        self.send_response(500 if failing else 204)
        self.end_headers()
        self.server.bodies.append(body)
        self.server.arrived.set()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def hooks() -> Iterator[_Hooks]:
    server = _Hooks()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _worker_thread(
    open_db: Callable[[], Database],
    requests_first: RequestsFirst | None = None,
    metrics: Metrics | None = None,
) -> WorkerThread:
    config = WorkerConfig(
        retry_schedule=(1.0,),
        timeout_ms=2000,
        allow_private_targets=True,
        poll_seconds=RARE_POLL_SECONDS,
    )
    return WorkerThread(
        open_db,
        lambda db: DeliveryWorker(db, config, metrics or Metrics(), requests_first=requests_first),
        loop_factory=type(asyncio.get_running_loop()),
    )


async def test_the_worker_delivers_while_the_api_loop_is_blocked(
    kit: DeliveryKit, database_url: str, hooks: _Hooks
) -> None:
    await kit.subscription(url=hooks.url)
    worker = _worker_thread(lambda: open_database(database_url, worker=True, beside=kit.db))
    await worker.start()
    try:
        [event] = await kit.events(("order.created", "k"))
        worker.wake()  # as the ingest service does after its commit
        # This loop is blocked until the receipt: only a worker on a loop of
        # its own can claim, send and write the outcome meanwhile.
        assert hooks.arrived.wait(DEADLINE_SECONDS), "not delivered while this loop was blocked"
    finally:
        await worker.stop()
    [body] = hooks.bodies
    assert event.id.encode() in body
    [delivery] = await kit.deliveries_of(event.id)
    assert delivery["status"] == "succeeded", "the outcome was written before stop returned"


@asynccontextmanager
async def _retry_due(
    kit: DeliveryKit,
    database_url: str,
    hooks: _Hooks,
    first: RequestsFirst,
    metrics: Metrics | None = None,
) -> AsyncIterator[NewEvent]:
    """A worker (stepping aside for ``first``'s requests) whose first attempt
    of the event it yields has just failed; its retry is due a second later."""
    hooks.failures = 1
    await kit.subscription(url=hooks.url)
    worker = _worker_thread(
        lambda: open_database(database_url, worker=True, beside=kit.db), first, metrics
    )
    await worker.start()
    try:
        [event] = await kit.events(("order.created", "k"))
        worker.wake()
        assert hooks.arrived.wait(DEADLINE_SECONDS), "the first attempt was not made"
        hooks.arrived.clear()
        yield event
    finally:
        await worker.stop()


async def test_a_retry_waits_until_the_request_in_flight_is_answered(
    kit: DeliveryKit, database_url: str, hooks: _Hooks
) -> None:
    first, metrics = RequestsFirst(longest=DEADLINE_SECONDS * 2), Metrics()
    async with _retry_due(kit, database_url, hooks, first, metrics) as event:
        first.started()  # a request of the API's, in flight
        assert not hooks.arrived.wait(2.0), "retried while a request was in flight"
        first.finished()
        assert hooks.arrived.wait(DEADLINE_SECONDS), "not retried once the request was answered"
    assert [event.id.encode() in body for body in hooks.bodies] == [True, True]
    waited = metrics.registry.get_sample_value("eventrelay_worker_stepped_aside_seconds_total")
    assert waited is not None
    assert waited >= 0.5


async def test_a_request_never_answered_holds_the_worker_for_a_while_only(
    kit: DeliveryKit, database_url: str, hooks: _Hooks
) -> None:
    first = RequestsFirst(longest=0.5)
    async with _retry_due(kit, database_url, hooks, first) as event:
        first.started()  # never answered
        assert hooks.arrived.wait(DEADLINE_SECONDS), "a request in flight stopped the worker"
    assert [event.id.encode() in body for body in hooks.bodies] == [True, True]


async def test_a_wake_up_for_new_work_ends_the_wait_at_once(
    kit: DeliveryKit, database_url: str, hooks: _Hooks
) -> None:
    await kit.subscription(url=hooks.url)
    first = RequestsFirst(longest=DEADLINE_SECONDS * 2)
    worker = _worker_thread(lambda: open_database(database_url, worker=True, beside=kit.db), first)
    await worker.start()
    try:
        first.started()  # the request whose event this is, answered after the wake-up
        [event] = await kit.events(("order.created", "k"))
        worker.wake()  # as the ingest service does after its commit
        assert hooks.arrived.wait(DEADLINE_SECONDS), "waited for the request to be answered"
    finally:
        first.finished()
        await worker.stop()
    [body] = hooks.bodies
    assert event.id.encode() in body


async def test_a_write_counts_from_before_its_turn_to_its_end(db: Database) -> None:
    """What the worker checks before it steps aside: a write of its own open or
    waiting (for SQLite's writer, held here by another) is counted."""
    assert db.writes == 0
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db.write():
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiting = asyncio.create_task(_write_once(db))
    await asyncio.sleep(0)  # the second write is waiting (SQLite) or open
    assert db.writes == 2
    release.set()
    await asyncio.gather(holder, waiting)
    assert db.writes == 0
    with pytest.raises(RuntimeError):
        async with db.write():
            raise RuntimeError("rolled back")
    assert db.writes == 0, "a failed write is no longer counted"


async def _write_once(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(text("SELECT 1"))


# A thread that raises (aiosqlite's, handing a result to a closed loop) fails the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_worker_that_cannot_start_raises_from_start(tmp_path: Path) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path / 'no-such-directory' / 'db.sqlite'}"
    opened: list[Database] = []

    def open_db() -> Database:
        opened.append(open_database(missing))
        return opened[0]

    worker = _worker_thread(open_db)
    before = set(threading.enumerate())
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(worker.start(), DEADLINE_SECONDS)
    # The failed connection's thread has ended before its loop could close.
    started = {t for t in set(threading.enumerate()) - before if t.name != "delivery-worker"}
    assert not started, started
    await worker.stop()  # joins the thread, raises nothing
    assert len(opened) == 1
    assert "delivery-worker" not in {thread.name for thread in threading.enumerate()}
