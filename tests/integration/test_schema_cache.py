"""The ingest path's shortcut past schema validation: taken only while the cache
of latest schema versions is fresh and says the type has none."""

from __future__ import annotations

from app.services.schemas import SchemaService
from app.store.database import Database


async def test_unschematized_comes_from_a_fresh_cache_only(db: Database) -> None:
    now = [0.0]
    service = SchemaService(db, refresh_seconds=1.0, clock=lambda: now[0])
    assert not service.unschematized("order.created", None), "nothing loaded yet"

    assert await service.check("order.created", None, {}, "/data", "/schema_version") == (None, [])
    assert service.unschematized("order.created", None)
    assert not service.unschematized("order.created", 1), "a requested version is checked"

    now[0] = 1.0
    assert not service.unschematized("order.created", None), "the cache is due a reload"
