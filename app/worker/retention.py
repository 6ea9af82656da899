"""The periodic upkeep that runs beside every delivery worker: the retention
job, and on PostgreSQL the statistics of the tables that churn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

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
