"""The periodic upkeep that runs beside every delivery worker: the retention
job, the parking of held subscriptions' backlogs, and on PostgreSQL the
statistics of the tables that churn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
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
# of its transactions parks at most (a short write: ingest waits for it on SQLite).
PARKING_INTERVAL_SECONDS = 1.0
PARKING_BATCH = 1000
# The most a pass walks of the claim index before it rests: the rest is the next's.
PARKING_CHUNKS = 8
# The most resumed subscriptions one claim takes parked deliveries from (each
# is walked for up to the claim's limit); the others get their turn.
RESUMED_PER_CLAIM = 8


class ParkingJob(_Job):
    """Keeps the held subscriptions' due deliveries out of the claim index
    (:mod:`app.store.parking`). Each pass lists the subscriptions with parked
    deliveries: those sendable again (active, circuit closed) are ``resumed``,
    whose parked deliveries the worker's claims take directly, as it has room,
    with no write to ready them first; a half-open circuit's subscription gets
    one delivery readied per cool-down, for its probe. Then it sweeps on through
    the due deliveries, parking the held ones. Passes follow each other at once
    while they park, else every ``PARKING_INTERVAL_SECONDS`` or when woken (a
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
        self._resumed: tuple[str, ...] = ()
        self._turn = 0

    @property
    def resumed(self) -> tuple[str, ...]:
        """The subscriptions whose parked deliveries a claim may take, at most
        ``RESUMED_PER_CLAIM``, in an order that turns by one each time it is
        read (a walk that stops at its limit does not always start with the
        same one, and each gets its turn)."""
        resumed = self._resumed
        if len(resumed) < 2:
            return resumed
        self._turn = (self._turn + 1) % len(resumed)
        return (resumed[self._turn :] + resumed[: self._turn])[:RESUMED_PER_CLAIM]

    def wake(self) -> None:
        self._wakeup.set()

    async def run_once(self, now: datetime | None = None) -> bool:
        """One pass; whether it left work for the next one."""
        now = now or datetime.now(UTC)
        unparked = False
        probed: dict[str, datetime] = {}
        resumed: list[str] = []
        for sub in await parking.parked_subscriptions(self._db):
            if sub.held(now):
                continue
            if not sub.half_open(now):
                resumed.append(sub.id)
                continue
            assert sub.circuit_open_until is not None
            probed[sub.id] = sub.circuit_open_until
            if self._probed.get(sub.id) != sub.circuit_open_until:
                unparked |= await parking.unpark(self._db, sub.id, 1) > 0
        unparked |= not set(resumed) <= set(self._resumed)
        self._probed, self._resumed = probed, tuple(resumed)
        if unparked:
            self._unparked()
        if not await parking.any_held(self._db, now):
            self._cursor = None
            return False
        parked = 0
        for _ in range(PARKING_CHUNKS):
            swept = await parking.sweep(self._db, self._cursor, now, PARKING_BATCH)
            self._cursor, parked = swept.cursor, parked + swept.parked
            if swept.cursor is None:
                break
        # A pass that parked goes on at once; one that only walked past
        # claimable deliveries leaves the rest of the walk for later.
        return parked > 0

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                more = await self.run_once()
            except Exception:
                log.exception("parking pass failed; trying again shortly")
                more = False
            if more:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), PARKING_INTERVAL_SECONDS)
