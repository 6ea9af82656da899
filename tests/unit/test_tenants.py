"""Choosing a request's tenant, the tenant cache, and the ingest bucket. No I/O."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.limits import TokenBucket
from app.domain.tenants import Choice, OtherTenant, choose_tenant
from app.domain.tokens import Scope
from app.errors import Forbidden, TooManyRequests, UnknownTenant
from app.services import tenants as service
from app.store.tenants import Tenant
from app.store.tokens import TokenRecord

NOW = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("token_tenant", "header", "chosen"),
    [
        (None, None, Choice("default", False)),
        (None, "acme", Choice("acme", True)),
        (None, "default", Choice("default", True)),
        ("acme", None, Choice("acme", False)),
        ("acme", "acme", Choice("acme", False)),
    ],
)
def test_the_header_else_the_token_else_default(
    token_tenant: str | None, header: str | None, chosen: Choice
) -> None:
    assert choose_tenant(token_tenant, header) == chosen


@pytest.mark.parametrize("header", ["other", "default", "ACME", ""])
def test_a_confined_token_may_name_only_its_own_tenant(header: str) -> None:
    with pytest.raises(OtherTenant):
        choose_tenant("acme", header)


def _tenant(tenant_id: str, rate: float | None = None) -> Tenant:
    return Tenant(tenant_id, tenant_id, {}, rate, None, "active", NOW, NOW)


class FakeStore:
    def __init__(self, tenants: dict[str, Tenant]) -> None:
        self.tenants = tenants
        self.reads = 0

    async def get(self, _: Any, tenant_id: str) -> Tenant | None:
        self.reads += 1
        await asyncio.sleep(0.01)
        return self.tenants.get(tenant_id)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    store = FakeStore({"default": _tenant("default"), "acme": _tenant("acme")})
    monkeypatch.setattr(service.store, "get", store.get)
    return store


async def test_concurrent_requests_share_one_lookup(fake: FakeStore) -> None:
    tenants = service.TenantService(None)  # type: ignore[arg-type]
    token = TokenRecord("tok_1", Scope.ADMIN)
    found = await asyncio.gather(*(tenants.resolve(token, "acme") for _ in range(64)))
    assert {t.id for t in found} == {"acme"}
    assert fake.reads == 1
    await tenants.resolve(token, "acme")
    assert fake.reads == 1  # cached


async def test_unknown_and_other_tenants(fake: FakeStore) -> None:
    tenants = service.TenantService(None)  # type: ignore[arg-type]
    with pytest.raises(UnknownTenant):
        await tenants.resolve(TokenRecord("tok_1", Scope.ADMIN), "nope")
    with pytest.raises(Forbidden):
        await tenants.resolve(TokenRecord("tok_2", Scope.INGEST, "acme"), "default")


def test_the_ingest_bucket_refuses_a_batch_whole_and_gives_back_replays() -> None:
    tenants = service.TenantService(None)  # type: ignore[arg-type]
    limited = _tenant("acme", rate=2)
    tenants.admit(limited, 2)
    with pytest.raises(TooManyRequests) as refused:
        tenants.admit(limited, 1)
    assert refused.value.retry_after == 1
    tenants.give_back(limited, 1)  # one of the two was an idempotent replay
    tenants.admit(limited, 1)
    with pytest.raises(TooManyRequests):
        tenants.admit(limited, 3)  # more than the bucket ever holds
    tenants.admit(_tenant("free"), 10_000)  # no limit


def test_take_many_is_all_or_nothing() -> None:
    bucket = TokenBucket(3.0, stamp=0.0)
    assert not bucket.take_many(4, now=0.0)
    assert bucket.take_many(3, now=0.0)
    assert not bucket.take_many(1, now=0.1)
    assert bucket.seconds_until(3) == pytest.approx(0.9)  # 0.3 refilled by t=0.1
    assert bucket.seconds_until(4) == float("inf")
