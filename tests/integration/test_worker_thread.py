"""The embedded worker on a thread and event loop of its own
(:class:`app.worker.thread.WorkerThread`): it delivers while the API's loop is
busy, hears the API's wake-ups across the threads, and a worker that cannot
start says so from ``start``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.errors import StoreUnavailable
from app.metrics import Metrics
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"


class _Answer(BaseHTTPRequestHandler):
    server: _Hooks

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.send_response(204)
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


def _worker_thread(open_db: Callable[[], Database]) -> WorkerThread:
    config = WorkerConfig(
        retry_schedule=(1.0,),
        timeout_ms=2000,
        allow_private_targets=True,
        poll_seconds=RARE_POLL_SECONDS,
    )
    return WorkerThread(
        open_db,
        lambda db: DeliveryWorker(db, config, Metrics()),
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
