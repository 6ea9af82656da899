"""Tenants: which tenant a request acts on, tenant management, ingest limits.

:meth:`TenantService.resolve` is the one place a request's tenant is decided
(the API's dependencies and the ingest hot path call it; so can the console).
Tenants are cached for a second, like tokens: a deleted tenant is unknown at
once in the process that deleted it and within a second in the others. A
tenant in use is read again in the background before its entry expires
(:mod:`app.services.fresh_cache`).

The ingest rate limit is a token bucket per tenant *per API process*: with N
API processes a tenant may get up to N times its rate (README, "Serving many
customers").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from app.domain.ids import new_id
from app.domain.limits import TokenBucket
from app.domain.tenants import DEFAULT_TENANT, OtherTenant, TenantCreate, TenantPatch, choose_tenant
from app.errors import (
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    TooManyRequests,
    UnknownTenant,
    ValidationFailed,
)
from app.services.fresh_cache import FreshCache
from app.store import tenants as store
from app.store.database import Database
from app.store.tenants import ACTIVE, Tenant
from app.store.tokens import TokenRecord

__all__ = ["Caller", "Tenant", "TenantService"]

CACHE_SECONDS = 1.0


class Caller:
    """Who makes a request (its token) and the tenant it acts on."""

    __slots__ = ("tenant", "token")

    def __init__(self, token: TokenRecord, tenant: Tenant) -> None:
        self.token = token
        self.tenant = tenant

    @property
    def tenant_id(self) -> str:
        return self.tenant.id

    @property
    def is_global(self) -> bool:
        return self.token.tenant_id is None

    def require_global(self) -> None:
        if not self.is_global:
            raise Forbidden("a tenant's token cannot make this call")


class TenantService:
    def __init__(
        self,
        db: Database,
        *,
        deleted: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._db = db
        self._deleted = deleted
        self._cache: FreshCache[str, Tenant | None] = FreshCache(
            self._lookup, seconds=CACHE_SECONDS
        )
        self._buckets: dict[str, TokenBucket] = {}

    # -- choosing the tenant ---------------------------------------------------

    async def resolve(self, token: TokenRecord, header: str | None) -> Tenant:
        """The tenant a request with ``token`` and this ``Eventrelay-Tenant``
        header acts on: 403 for a confined token naming another tenant, 404
        (unknown-tenant) for a global token naming one that does not exist."""
        try:
            choice = choose_tenant(token.tenant_id, header)
        except OtherTenant:
            raise Forbidden("this token may act only on its own tenant") from None
        tenant = await self.active(choice.tenant_id)
        if tenant is None:
            # A confined token of a tenant just deleted elsewhere is revoked;
            # until this process hears of it the tenant is unknown all the same.
            raise UnknownTenant(f"no tenant {choice.tenant_id}")
        return tenant

    async def active(self, tenant_id: str) -> Tenant | None:
        """The active tenant (cached for a second), or None."""
        return await self._cache.get(tenant_id)

    async def close(self) -> None:
        """Stop refreshing cached tenants (at shutdown)."""
        await self._cache.close()

    async def _lookup(self, tenant_id: str) -> Tenant | None:
        found = await store.get(self._db, tenant_id)
        return found if found is not None and found.status == ACTIVE else None

    def _forget(self, tenant_id: str) -> None:
        """A change in this process: the next request reads the tenant again."""
        self._cache.forget(tenant_id)

    # -- ingest limit ----------------------------------------------------------

    def admit(self, tenant: Tenant, events: int) -> None:
        """Take ``events`` tokens from the tenant's ingest bucket, or refuse the
        whole request (429 with the seconds until they are there)."""
        rate = tenant.ingest_rate_per_second
        if rate is None:
            return
        bucket = self._buckets.get(tenant.id)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[tenant.id] = TokenBucket(rate)
        if not bucket.take_many(events):
            wait = bucket.seconds_until(events)
            if math.isinf(wait):
                raise TooManyRequests(
                    f"tenant {tenant.id} takes at most {max(rate, 1.0):g} events at once",
                    retry_after=max(1, math.ceil(1 / rate)),
                )
            raise TooManyRequests(
                f"tenant {tenant.id} is over its ingest rate of {rate:g} events a second",
                retry_after=max(1, math.ceil(wait)),
            )

    def give_back(self, tenant: Tenant, events: int) -> None:
        """Idempotent replays stored nothing: their tokens go back."""
        bucket = self._buckets.get(tenant.id)
        if bucket is not None and events:
            bucket.give_back(events)

    # -- management ------------------------------------------------------------

    async def create(self, body: TenantCreate) -> Tenant:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "id": body.id or new_id("ten"),
            "name": body.name,
            "metadata": body.metadata or {},
            "status": ACTIVE,
            "created_at": now,
            "updated_at": now,
        }
        tenant = await store.create(self._db, values)
        self._forget(tenant.id)
        return tenant

    async def get(self, tenant_id: str) -> Tenant:
        found = await store.get(self._db, tenant_id)
        if found is None or found.status != ACTIVE:
            raise NotFound(f"no tenant {tenant_id}")
        return found

    async def list_page(
        self, *, after_id: str | None, limit: int
    ) -> tuple[list[Tenant], str | None]:
        return await store.list_page(self._db, after_id=after_id, limit=limit)

    async def patch(self, tenant_id: str, body: TenantPatch) -> Tenant:
        changes = body.model_dump(exclude_unset=True)
        if "name" in changes and changes["name"] is None:
            raise _not_null("name")
        changes["updated_at"] = datetime.now(UTC)
        updated = await store.patch(self._db, tenant_id, changes)
        if updated is None:
            raise NotFound(f"no tenant {tenant_id}")
        self._forget(tenant_id)
        return updated

    async def delete(self, tenant_id: str) -> None:
        """The tenant disappears now; its rows go in the background."""
        if tenant_id == DEFAULT_TENANT:
            raise Conflict("the default tenant cannot be deleted")
        if not await store.mark_deleting(self._db, tenant_id, datetime.now(UTC)):
            raise NotFound(f"no tenant {tenant_id}")
        self._forget(tenant_id)
        self._buckets.pop(tenant_id, None)
        self._deleted(tenant_id)


def _not_null(field: str) -> ValidationFailed:
    return ValidationFailed(
        "the request body is invalid", [FieldError(f"/{field}", "may not be null")]
    )
