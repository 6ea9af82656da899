"""Reading events back: pages, one event with its deliveries, its attempts, counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.errors import NotFound
from app.store import dlq as dlq_store
from app.store import events as store
from app.store.database import Database
from app.store.dlq import Attempt
from app.store.events import DeliverySummary, Stats, StoredEvent

__all__ = ["Attempt", "DeliverySummary", "EventDetail", "EventService", "Stats", "StoredEvent"]


@dataclass(frozen=True, slots=True)
class EventDetail:
    event: StoredEvent
    deliveries: list[DeliverySummary]


class EventService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_page(
        self,
        tenant_id: str,
        *,
        event_type: str | None,
        key: str | None,
        order: Literal["asc", "desc"],
        after_seq: int | None,
        limit: int,
        since: datetime | None = None,
        until: datetime | None = None,
        delivery_status: str | None = None,
        examine: int | None = None,
    ) -> tuple[list[StoredEvent], int | None]:
        """A page of events and the ``seq`` to continue after (None on the last
        page); ``examine`` bounds a filtered search (``store.list_events``)."""
        return await store.list_events(
            self._db,
            tenant_id,
            event_type=event_type,
            key=key,
            order=order,
            after_seq=after_seq,
            limit=limit,
            since=since,
            until=until,
            delivery_status=delivery_status,
            examine=examine,
        )

    async def get(self, tenant_id: str, event_id: str) -> EventDetail:
        event = await self._event(tenant_id, event_id)
        return EventDetail(event, await store.event_deliveries(self._db, event_id))

    async def attempts(self, tenant_id: str, event_id: str) -> list[Attempt]:
        """Every attempt made for the event, for any of its deliveries."""
        await self._event(tenant_id, event_id)
        return await dlq_store.attempts_of_event(self._db, event_id)

    async def stats(self, tenant_id: str) -> Stats:
        return await store.stats(self._db, tenant_id)

    async def _event(self, tenant_id: str, event_id: str) -> StoredEvent:
        event = await store.get_event(self._db, tenant_id, event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        return event
