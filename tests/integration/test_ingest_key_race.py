"""The key race on PostgreSQL: another process commits one of a flush's
idempotency keys after the flush read the stored keys and before it wrote.

The flush's write fails as a whole (nothing of it is stored) and the flush is
tried again, when its read finds the key: the request is answered as a replay
of the other process's event. Both of the write's paths are covered: without
lines, and with a line (an ordering key), whose locks come first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.events import NewEvent
from app.domain.idempotency import Accepted
from app.domain.ids import new_id
from app.store import driver, ingest, schema
from tests.integration.conftest import DeliveryKit

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

TTL = timedelta(days=1)


def _event(key: str, now: datetime) -> NewEvent:
    return NewEvent(
        new_id("evt"), "order.created", "c-1", '{"n": 1}', None, None, now, key, "f" * 64
    )


async def _count(kit: DeliveryKit, table: Any) -> int:
    async with kit.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


@pytest.mark.parametrize("ordering", ["none", "key"])
async def test_a_key_committed_between_read_and_write_is_replayed(
    kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch, ordering: str
) -> None:
    await kit.subscription(event_types=["*"], ordering=ordering)
    now = datetime.now(UTC)
    theirs, ours = _event("race", now), _event("race", now)
    real = driver.fetch_all
    reads = 0

    async def fetch_all(conn: AsyncConnection, sql: str, params: Any = ()) -> list[Sequence[Any]]:
        nonlocal reads
        rows = await real(conn, sql, params)
        if sql is ingest._PG_READ:
            reads += 1
            if reads == 1:
                # The other process's flush, committed before ours writes.
                other = await ingest.ingest(kit.db, [[theirs]], ttl=TTL, now=now)
                assert other.results[0] == [Accepted(theirs.id, other_body(other), False)]
        return rows

    def other_body(outcome: ingest.IngestOutcome) -> str:
        result = outcome.results[0]
        assert isinstance(result, list)
        return result[0].body

    monkeypatch.setattr(driver, "fetch_all", fetch_all)
    outcome = await ingest.ingest(kit.db, [[ours]], ttl=TTL, now=now)

    # Read, then (after the failed write) read again: the retry's read saw the key.
    assert reads == 3  # ours, theirs, ours again
    [answer] = outcome.results[0]
    assert isinstance(answer, Accepted)
    assert (answer.event_id, answer.replayed) == (theirs.id, True)
    assert outcome.deliveries == 0
    # Nothing of the failed write was stored: one event, one delivery, one key.
    assert await _count(kit, schema.events) == 1
    assert await _count(kit, schema.deliveries) == 1
    assert await _count(kit, schema.idempotency_keys) == 1
