"""A batch is stored in its order: events and their deliveries are numbered (``seq``) as sent.

Per-key delivery order follows ``deliveries.seq``, so a batch of one key's
events must reach the database in the batch's order on both backends (on
PostgreSQL a whole flush is one ``INSERT … SELECT FROM unnest(…)``).
"""

from __future__ import annotations

import httpx
from sqlalchemy import select

from app.settings import Settings
from app.store import schema
from app.store.database import Database, open_database

SIZE = 200


async def _stored_order(database_url: str, event_ids: list[str]) -> tuple[list[str], list[str]]:
    db: Database = open_database(database_url)
    try:
        async with db.read() as conn:
            events = schema.events
            by_seq = await conn.execute(
                select(events.c.id).where(events.c.id.in_(event_ids)).order_by(events.c.seq)
            )
            d = schema.deliveries
            deliveries = await conn.execute(
                select(d.c.event_id).where(d.c.event_id.in_(event_ids)).order_by(d.c.seq)
            )
            return [r[0] for r in by_seq], [r[0] for r in deliveries]
    finally:
        await db.dispose()


async def test_a_batch_is_numbered_in_its_order(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    created = await client.post(
        "/v1/subscriptions", json={"url": "http://8.8.8.8/hooks", "event_types": ["*"]}
    )
    assert created.status_code == 201, created.text
    # Types in reverse alphabetical order, so no sort by type or ID can pass for batch order.
    items = [
        {"idempotency_key": f"k{n}", "type": f"order.t{SIZE - n:04d}", "key": "c-1"}
        for n in range(SIZE)
    ]
    response = await client.post("/v1/events/batch", json={"events": items})
    assert response.status_code == 200, response.text
    sent = [item["id"] for item in response.json()["items"]]

    events, deliveries = await _stored_order(settings.database_url, sent)
    assert events == sent
    assert deliveries == sent
