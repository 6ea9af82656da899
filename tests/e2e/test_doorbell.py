"""A standalone ``eventrelay worker`` on a SQLite file is woken by the API's commits.

``eventrelay serve --no-worker`` and ``eventrelay worker`` on one SQLite file,
as real processes; the worker polls only once a minute here, so everything it
does within seconds of a request was rung by the API process's doorbell
(``app/store/doorbell.py``), as PostgreSQL's ``NOTIFY`` does for workers there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.procs import Relay, WorkerPool, unique_type, worker_pool
from tests.e2e.receivers import ReceiverPool, wait_until

# The worker's poll: far longer than any deadline below.
POLL_SECONDS = "60"
# Well under the poll, with room for a slow machine.
WOKEN_WITHIN = 5.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    yield from worker_pool(tmp_path)


async def test_a_sqlite_worker_in_its_own_process_is_woken_by_each_commit(
    server_factory: ServerFactory,
    sqlite_file_url: str,
    workers: WorkerPool,
    receivers: ReceiverPool,
) -> None:
    api = server_factory(sqlite_file_url, worker=False)  # one file, two processes
    first, second = await receivers.start(), await receivers.start()
    worker = workers.make(sqlite_file_url, env={"EVENTRELAY_WORKER_POLL_SECONDS": POLL_SECONDS})
    worker.start()
    async with Relay(api) as relay:
        event_type = unique_type("doorbell")
        sub = await relay.subscribe(first.url(), event_types=[event_type])
        # Each event, published while the worker waits for its next poll, is
        # delivered within seconds; the second one after the worker went idle again.
        for n in range(2):
            published = time.monotonic()
            event_id: str = (await relay.publish(event_type, {"n": n}))["id"]
            await wait_until(
                partial(first.for_event, event_id),
                WOKEN_WITHIN,
                message=f"event {n} delivered before the worker's poll",
            )
            assert time.monotonic() - published < WOKEN_WITHIN

        # A changed subscription rings too: the next event goes to its new URL at
        # once, not to the one the worker read a moment ago.
        await relay.patch(sub["id"], url=second.url())
        moved = await relay.publish(event_type, {"n": 2})
        await wait_until(
            lambda: first.for_event(moved["id"]) or second.for_event(moved["id"]),
            WOKEN_WITHIN,
            message="the event after the change delivered",
        )
        assert second.for_event(moved["id"]), "delivered to the URL before the change"
        assert not first.for_event(moved["id"])
