"""Operating on the dead-letter queue: inspect, redrive, discard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from app.domain.counts import Count
from app.errors import NotFound
from app.store import dlq as store
from app.store import events as events_store
from app.store.database import Database
from app.store.dlq import Attempt, DeadLetter
from app.store.events import StoredEvent

__all__ = ["Attempt", "DeadLetter", "DeadLetterDetail", "DeadLetterService", "StoredEvent"]

REDRIVE_BATCH = 500  # dead letters per transaction
COUNT_CAP = 10_000  # a count reads this many index entries at most


@dataclass(frozen=True, slots=True)
class DeadLetterDetail:
    dead_letter: DeadLetter
    event: StoredEvent
    attempts: list[Attempt]


class DeadLetterService:
    def __init__(self, db: Database, *, wake_workers: Callable[[], None]) -> None:
        self._db = db
        self._wake = wake_workers

    async def list_page(
        self,
        tenant_id: str,
        *,
        subscription_id: str | None,
        event_type: str | None,
        after_seq: int | None,
        limit: int,
    ) -> tuple[list[DeadLetter], int | None]:
        """Dead letters, oldest first, and the ``seq`` to continue after."""
        return await store.list_dead(
            self._db,
            tenant_id,
            subscription_id=subscription_id,
            event_type=event_type,
            after_seq=after_seq,
            limit=limit,
        )

    async def count(
        self, tenant_id: str, *, subscription_id: str | None, event_type: str | None
    ) -> Count:
        """How many of the tenant's dead letters match the filter, up to ``COUNT_CAP``."""
        found = await store.count_dead(
            self._db,
            tenant_id,
            subscription_id=subscription_id,
            event_type=event_type,
            cap=COUNT_CAP,
        )
        return Count(found, COUNT_CAP)

    async def show(self, tenant_id: str, delivery_id: str) -> DeadLetterDetail:
        dead = await store.get_dead(self._db, tenant_id, delivery_id)
        event = await events_store.get_event(self._db, tenant_id, dead.event_id) if dead else None
        if dead is None or event is None:
            raise NotFound(f"no dead letter {delivery_id}")
        attempts = await store.attempts_of_delivery(self._db, delivery_id)
        return DeadLetterDetail(dead, event, attempts)

    async def redrive(self, tenant_id: str, delivery_id: str) -> None:
        async with self._db.write() as conn:
            found = await store.redrive(conn, tenant_id, delivery_id, datetime.now(UTC))
        if not found:
            raise NotFound(f"no dead letter {delivery_id}")
        self._wake()

    async def redrive_matching(
        self,
        tenant_id: str,
        *,
        subscription_id: str | None,
        event_type: str | None,
        limit: int | None,
    ) -> int:
        """Every matching dead letter, oldest first, a batch per transaction so
        ingest never waits long; ``limit`` caps how many."""
        total = 0
        while limit is None or total < limit:
            batch = REDRIVE_BATCH if limit is None else min(REDRIVE_BATCH, limit - total)
            async with self._db.write() as conn:
                matched, redriven = await store.redrive_batch(
                    conn,
                    tenant_id,
                    subscription_id=subscription_id,
                    event_type=event_type,
                    now=datetime.now(UTC),
                    batch=batch,
                )
            total += redriven
            if matched < batch:
                break
        if total:
            self._wake()
        return total

    async def discard(self, tenant_id: str, delivery_id: str) -> None:
        async with self._db.write() as conn:
            found = await store.discard(conn, tenant_id, delivery_id, datetime.now(UTC))
        if not found:
            raise NotFound(f"no dead letter {delivery_id}")
        self._wake()
