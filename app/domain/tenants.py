"""What a tenant is on the way in, and which tenant a request acts on.

:func:`choose_tenant` is the one rule that picks the tenant of a request from
its token and its ``Eventrelay-Tenant`` header; the API and the console both
call it through ``app.services.tenants``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.domain.jsonbody import unstorable_strings

DEFAULT_TENANT = "default"
TENANT_HEADER = "eventrelay-tenant"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_METADATA_KEYS = 50

TenantId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def _storable(value: str) -> str:
    if next(iter(unstorable_strings(value, "")), None) is not None:
        raise ValueError("must not contain \\u0000 or lone surrogates")
    return value


def _metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
    for key, item in value.items():
        _storable(key)
        _storable(item)
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Metadata = Annotated[
    dict[str, Annotated[str, Field(max_length=1000)]] | None, AfterValidator(_metadata)
]


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: TenantId | None = None
    name: Name
    metadata: Metadata = None


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    metadata: Metadata = None
    ingest_rate_per_second: float | None = Field(default=None, gt=0, le=1_000_000)
    max_subscriptions: int | None = Field(default=None, ge=0, le=1_000_000_000)


@dataclass(frozen=True, slots=True)
class Choice:
    """The tenant a request acts on; ``check`` when it must be looked up (a
    global token naming a tenant), as the token's own tenant needs no check."""

    tenant_id: str
    check: bool


class OtherTenant(Exception):
    """A tenant-confined token named another tenant in the header (403)."""


def choose_tenant(token_tenant: str | None, header: str | None) -> Choice:
    """The header's tenant, else the token's, else ``default``; a confined token
    may name only its own."""
    if token_tenant is not None:
        if header is not None and header != token_tenant:
            raise OtherTenant(header)
        return Choice(token_tenant, False)
    if header is None:
        return Choice(DEFAULT_TENANT, False)
    return Choice(header, True)
