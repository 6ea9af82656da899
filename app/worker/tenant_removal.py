"""Removing deleted tenants' rows in the background, beside every delivery worker.

Each batch is one short transaction (``app.store.tenants.remove_batch``), with a
pause between batches so that ingest and the delivery cycle get the writer in
between. A tenant's row goes last, so a removal cut short (a crash, a stop) is
found again by the next pass, in this process or any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.store.database import Database
from app.store.tenants import deleting, remove_batch

log = logging.getLogger(__name__)

BATCH = 500
PAUSE_SECONDS = 0.02
INTERVAL_SECONDS = 5.0


class TenantRemoval:
    def __init__(
        self,
        db: Database,
        *,
        batch: int = BATCH,
        pause_seconds: float = PAUSE_SECONDS,
        interval_seconds: float = INTERVAL_SECONDS,
    ) -> None:
        self._db = db
        self._batch = batch
        self._pause = pause_seconds
        self._interval = interval_seconds
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tenant-removal")

    def wake(self) -> None:
        self._wakeup.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_once(self) -> int:
        """Remove every deleted tenant's rows; returns how many were removed."""
        total = 0
        for tenant_id in await deleting(self._db):
            removed = 0
            while count := await remove_batch(self._db, tenant_id, self._batch):
                removed += count
                await asyncio.sleep(self._pause)  # let waiting writers in
            total += removed
            log.info("deleted tenant removed", extra={"tenant_id": tenant_id, "rows": removed})
        return total

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self.run_once()
            except Exception:
                log.exception("removing deleted tenants failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
