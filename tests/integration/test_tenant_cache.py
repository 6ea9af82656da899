"""Cached tenants and schema versions: kept fresh in the background while in
use, and a change made through another process still takes effect within a
second (README, "Tenant caches"; "Schemas")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from app.domain.event_schemas import Compatibility, EventTypeCreate
from app.domain.tenants import TenantCreate
from app.services import tenants as tenants_module
from app.services.schemas import SchemaService
from app.services.tenants import TenantService
from app.store.database import Database

BOUND = 1.0  # the documented bound, in seconds


async def _in_use_until(ask: Callable[[], Awaitable[bool]], changed: float) -> None:
    """Ask every 20 ms, as a client would, until ``ask`` sees the change; no
    answer asked for a lifetime after the change may be the old one."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        if await ask():
            return
        assert asked - changed < BOUND, "the old answer outlived its bound"
        await asyncio.sleep(0.02)


async def test_a_tenant_deleted_elsewhere_is_unknown_within_a_second_while_in_use(
    db: Database,
) -> None:
    assert tenants_module.CACHE_SECONDS == BOUND
    here, elsewhere = TenantService(db), TenantService(db)
    await elsewhere.create(TenantCreate(id="acme", name="Acme"))
    assert await here.active("acme") is not None
    await asyncio.sleep(0.4)  # some way into the entry's life, with a refresh under way
    await elsewhere.delete("acme")
    deleted = asyncio.get_running_loop().time()

    async def gone() -> bool:
        return await here.active("acme") is None

    await _in_use_until(gone, deleted)
    await here.close()


async def test_a_schema_version_registered_elsewhere_is_used_within_a_second_while_in_use(
    db: Database,
) -> None:
    here, elsewhere = SchemaService(db), SchemaService(db)
    await elsewhere.create_type(
        EventTypeCreate(name="order.created", compatibility=Compatibility.NONE)
    )
    await elsewhere.register("order.created", {"type": "object"})

    async def version() -> int | None:
        found, errors = await here.check(
            "order.created", None, {"id": 1}, "/data", "/schema_version"
        )
        assert errors == []
        return found

    assert await version() == 1
    await asyncio.sleep(0.4)
    await elsewhere.register("order.created", {"type": "object", "required": ["id"]})
    registered = asyncio.get_running_loop().time()

    async def second() -> bool:
        return await version() == 2

    await _in_use_until(second, registered)
    await here.close()


async def test_the_schema_cache_in_use_is_reloaded_before_it_is_due(db: Database) -> None:
    service = SchemaService(db)
    assert not service.unschematized("order.created", None), "nothing loaded yet"
    await service.check("order.created", None, {}, "/data", "/schema_version")
    await asyncio.sleep(BOUND + 0.1)  # past the first load's life, with no request
    assert service.unschematized("order.created", None), "reloaded in the background"
    await service.close()
