"""The periodic upkeep that runs beside every delivery worker: the retention
job, the parking of held subscriptions' backlogs, and on PostgreSQL the
statistics of the tables that churn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from app.store import parking
from app.store.database import Database
from app.store.retention import analyze_stale_tables, prune, refresh_statistics

log = logging.getLogger(__name__)


class _Job(ABC):
    """A loop on a task of its own, from :meth:`start` until :meth:`stop` cancels it."""

    name = ""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @abstractmethod
    async def _run(self) -> None: ...


class RetentionJob(_Job):
    name = "retention"

    def __init__(
        self, db: Database, *, keep: timedelta, keys_ttl: timedelta, interval_seconds: float
    ) -> None:
        super().__init__()
        self._db = db
        self._keep = keep
        self._keys_ttl = keys_ttl
        self._interval = interval_seconds

    async def run_once(self) -> None:
        now = datetime.now(UTC)
        pruned = await prune(self._db, cutoff=now - self._keep, keys_cutoff=now - self._keys_ttl)
        if any(asdict(pruned).values()):
            log.info("retention pruned old rows", extra=asdict(pruned))
        await refresh_statistics(self._db)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("retention pass failed; trying again next interval")
            await asyncio.sleep(self._interval)


STATISTICS_CHECK_SECONDS = 5.0


class StatisticsJob(_Job):
    """PostgreSQL: every ``STATISTICS_CHECK_SECONDS``, analyze the tables that
    grew or changed much since their last analyze (:func:`analyze_stale_tables`),
    so that no plan waits for the retention job's next pass, or for
    autovacuum, to see a table as large as it is."""

    name = "statistics"

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db

    def start(self) -> None:
        if not self._db.is_sqlite:
            super().start()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(STATISTICS_CHECK_SECONDS)
            try:
                analyzed = await analyze_stale_tables(self._db)
            except Exception:
                log.exception("analyzing the tables failed; trying again shortly")
                continue
            if analyzed:
                log.info("tables analyzed", extra={"tables": analyzed})


# How often the parking job looks when it found nothing to do, and how much one
# of its transactions parks or unparks at most (a short write: ingest waits
# for it on SQLite).
PARKING_INTERVAL_SECONDS = 1.0
PARKING_BATCH = 1000
# The most a pass walks of the claim index before it rests: the rest is the next's.
PARKING_CHUNKS = 8
# A resumed subscription's backlog is readied as the worker takes it: at most
# this many batches ahead of the oldest the worker has not touched yet, looked
# at every PARKING_PACE_SECONDS. Readying a whole backlog at once wrote it all
# in one burst, which ingest's commits waited behind on PostgreSQL.
UNPARK_AHEAD = 8
PARKING_PACE_SECONDS = 0.25
# A batch whose oldest delivery the worker has not touched in this long counts
# as taken all the same: that one may be held behind its line (a dead letter
# that blocks it), and the rest of the backlog must not wait for it.
UNPARK_PATIENCE_SECONDS = 5.0


class ParkingJob(_Job):
    """Keeps the held subscriptions' due deliveries out of the claim index
    (:mod:`app.store.parking`): each pass unparks what may be sent again (an
    active subscription's with its circuit closed, paced by how fast the worker
    takes them; one for a half-open circuit's probe), then sweeps on through
    the due deliveries, parking the held ones. Passes follow each other at once
    while they park, every ``PARKING_PACE_SECONDS`` while a backlog is being
    readied, else every ``PARKING_INTERVAL_SECONDS`` or when woken (a
    subscription changed, a circuit closed); ``unparked`` is called when
    deliveries became claimable."""

    name = "parking"

    def __init__(self, db: Database, unparked: Callable[[], None]) -> None:
        super().__init__()
        self._db = db
        self._unparked = unparked
        self._wakeup = asyncio.Event()
        self._cursor: parking.Cursor | None = None
        # The half-open circuits given their probe, by subscription: its
        # cool-down's end, so that each cool-down gives one.
        self._probed: dict[str, datetime] = {}
        # The subscriptions whose backlog is being readied: the oldest delivery
        # of each batch readied that the worker may not have taken yet, and when.
        self._ahead: dict[str, deque[tuple[int, float]]] = {}

    def wake(self) -> None:
        self._wakeup.set()

    async def run_once(self, now: datetime | None = None) -> float:
        """One pass; how long to rest before the next (0: go on at once)."""
        now = now or datetime.now(UTC)
        unparked, pacing = 0, False
        probed: dict[str, datetime] = {}
        ahead: dict[str, deque[tuple[int, float]]] = {}
        clock = time.monotonic()
        for sub in await parking.parked_subscriptions(self._db):
            if sub.held(now):
                continue
            if sub.half_open(now):
                assert sub.circuit_open_until is not None
                probed[sub.id] = sub.circuit_open_until
                if self._probed.get(sub.id) != sub.circuit_open_until:
                    unparked += (await parking.unpark(self._db, sub.id, 1)).count
                continue
            markers = ahead[sub.id] = self._ahead.get(sub.id, deque())
            while markers and (
                clock - markers[0][1] > UNPARK_PATIENCE_SECONDS
                or not await parking.untouched(self._db, markers[0][0])
            ):
                markers.popleft()
            pacing = True
            if len(markers) < UNPARK_AHEAD:
                done = await parking.unpark(self._db, sub.id, PARKING_BATCH)
                unparked += done.count
                if done.first is not None:
                    markers.append((done.first, clock))
        self._probed, self._ahead = probed, ahead
        if unparked:
            self._unparked()
        rest = PARKING_PACE_SECONDS if pacing else PARKING_INTERVAL_SECONDS
        if not await parking.any_held(self._db, now):
            self._cursor = None
            return rest
        parked = 0
        for _ in range(PARKING_CHUNKS):
            swept = await parking.sweep(self._db, self._cursor, now, PARKING_BATCH)
            self._cursor, parked = swept.cursor, parked + swept.parked
            if swept.cursor is None:
                break
        # A pass that parked goes on at once; one that only walked past
        # claimable deliveries leaves the rest of the walk for later.
        return 0.0 if parked else rest

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                rest = await self.run_once()
            except Exception:
                log.exception("parking pass failed; trying again shortly")
                rest = PARKING_INTERVAL_SECONDS
            if not rest:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), rest)
