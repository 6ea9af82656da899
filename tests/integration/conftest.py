"""Fixtures for the delivery tests: the store on the test's own database, and a
small kit that makes subscriptions and events and drives claim and complete the
way the worker does, with the clock in the test's hands."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.domain.events import NewEvent
from app.domain.ids import new_id
from app.domain.subscriptions import SubscriptionCreate
from app.services.subscriptions import SubscriptionService
from app.store import deliveries as delivery_store
from app.store import schema
from app.store.database import Database, open_database
from app.store.ingest import ingest
from app.store.subscriptions import Subscription
from app.store.work import Claimed, ClaimRequest, Completion
from tests.conftest import pg_admin, pg_url

LEASE = timedelta(minutes=5)


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database with no tables yet (for migration tests), dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"er_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


class DeliveryKit:
    """Subscriptions, events and the worker's store calls, on one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def subscription(self, **fields: Any) -> Subscription:
        fields.setdefault("url", "http://8.8.8.8/hooks")
        tenant_id = fields.pop("tenant_id", "default")
        service = SubscriptionService(self.db, allow_private_targets=True)
        return await service.create(tenant_id, SubscriptionCreate(**fields))

    async def events(
        self,
        *specs: tuple[str, str | None],
        together: bool = False,
        data_json: str = "{}",
        tenant_id: str = "default",
    ) -> list[NewEvent]:
        """Ingest events given as (type, key): one transaction each, or all in one."""
        now = datetime.now(UTC)
        made = [
            NewEvent(
                id=new_id("evt"),
                type=event_type,
                key=key,
                data_json=data_json,
                schema_version=None,
                occurred_at=None,
                received_at=now,
                idempotency_key=None,
                fingerprint=None,
                tenant_id=tenant_id,
            )
            for event_type, key in specs
        ]
        units = [made] if together else [[e] for e in made]
        if together:
            await ingest(self.db, units, ttl=timedelta(days=1), now=now)
        else:
            for unit in units:
                await ingest(self.db, [unit], ttl=timedelta(days=1), now=now)
        return made

    async def claim(
        self,
        owner: str = "worker-a",
        *,
        at: datetime | None = None,
        limit: int = 100,
        exclude: Sequence[str] = (),
        fresh: int = 0,
        crowding: Sequence[str] = (),
        oldest: int | None = None,
        lease: timedelta = LEASE,
        db: Database | None = None,
        resumed: Sequence[str] = (),
    ) -> list[Claimed]:
        now = at or datetime.now(UTC) + timedelta(seconds=1)
        request = ClaimRequest(
            owner,
            now,
            now + lease,
            limit,
            list(exclude),
            fresh=fresh,
            crowding=list(crowding),
            oldest=oldest,
            resumed=list(resumed),
        )
        work = await delivery_store.complete_and_claim(db or self.db, [], request=request)
        return [w.delivery for w in work]

    async def finish(
        self,
        claimed: Claimed,
        status: str,
        *,
        owner: str = "worker-a",
        status_code: int | None = None,
        next_attempt_at: datetime | None = None,
        db: Database | None = None,
    ) -> None:
        now = datetime.now(UTC)
        code = status_code or {"succeeded": 200, "pending": 500, "dead": 500}[status]
        await delivery_store.complete_and_claim(
            db or self.db,
            [
                Completion(
                    delivery=claimed,
                    owner=owner,
                    status=status,
                    started_at=now,
                    duration_ms=3,
                    status_code=code,
                    error=None,
                    response_body="ok",
                    next_attempt_at=next_attempt_at,
                    finished_at=now,
                )
            ],
        )

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        d = schema.deliveries
        async with self.db.read() as conn:
            row = (await conn.execute(select(d).where(d.c.id == delivery_id))).one()
        return dict(row._mapping)

    async def deliveries_of(self, event_id: str) -> list[dict[str, Any]]:
        d = schema.deliveries
        async with self.db.read() as conn:
            rows = await conn.execute(select(d).where(d.c.event_id == event_id).order_by(d.c.seq))
            return [dict(r._mapping) for r in rows]

    async def delivery_for(self, event: NewEvent, subscription: Subscription) -> dict[str, Any]:
        found = [
            r for r in await self.deliveries_of(event.id) if r["subscription_id"] == subscription.id
        ]
        assert len(found) == 1, found
        return found[0]

    async def attempts_of(self, delivery_id: str) -> list[dict[str, Any]]:
        a = schema.attempts
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(a).where(a.c.delivery_id == delivery_id).order_by(a.c.seq)
            )
            return [dict(r._mapping) for r in rows]

    async def statuses(self) -> dict[str, int]:
        """How many deliveries are in each status."""
        d = schema.deliveries
        async with self.db.read() as conn:
            rows = await conn.execute(select(d.c.status, func.count()).group_by(d.c.status))
            return {str(status): int(count) for status, count in rows.all()}

    async def set_subscription(self, subscription_id: str, **values: Any) -> None:
        s = schema.subscriptions
        async with self.db.write() as conn:
            await conn.execute(update(s).where(s.c.id == subscription_id).values(**values))


@pytest.fixture
def kit(db: Database) -> DeliveryKit:
    return DeliveryKit(db)
