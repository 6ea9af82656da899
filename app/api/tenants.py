"""``/v1/tenants``: the installation's customers (global admin tokens only)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.api import schemas
from app.api.deps import GlobalAdminDep, ServicesDep
from app.api.events import stats_out
from app.domain.events import rfc3339
from app.domain.tenants import ID_PATTERN, TenantCreate, TenantPatch
from app.services.tenants import Tenant

router = APIRouter(prefix="/v1", tags=["tenants"], dependencies=[GlobalAdminDep])
_PROBLEMS: dict[int | str, dict[str, object]] = {
    s: {"model": schemas.Problem} for s in (401, 403, 404, 409, 422)
}


def _out(tenant: Tenant) -> dict[str, object]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "metadata": tenant.metadata,
        "ingest_rate_per_second": tenant.ingest_rate_per_second,
        "max_subscriptions": tenant.max_subscriptions,
        "created_at": rfc3339(tenant.created_at),
        "updated_at": rfc3339(tenant.updated_at),
    }


@router.post("/tenants", status_code=201, response_model=schemas.TenantOut, responses=_PROBLEMS)
async def create_tenant(body: TenantCreate, svc: ServicesDep) -> dict[str, object]:
    return _out(await svc.tenants.create(body))


@router.get("/tenants", response_model=schemas.TenantPage, responses=_PROBLEMS)
async def list_tenants(
    svc: ServicesDep,
    cursor: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, object]:
    page, last = await svc.tenants.list_page(after_id=cursor, limit=limit)
    return {"items": [_out(t) for t in page], "next_cursor": last}


@router.get("/tenants/{tenant_id}", response_model=schemas.TenantDetail, responses=_PROBLEMS)
async def get_tenant(tenant_id: str, svc: ServicesDep) -> dict[str, object]:
    tenant = await svc.tenants.get(tenant_id)
    stats = stats_out(await svc.events.stats(tenant.id))
    return _out(tenant) | {"stats": stats.model_dump()}


@router.patch("/tenants/{tenant_id}", response_model=schemas.TenantOut, responses=_PROBLEMS)
async def patch_tenant(tenant_id: str, body: TenantPatch, svc: ServicesDep) -> dict[str, object]:
    return _out(await svc.tenants.patch(tenant_id, body))


@router.delete("/tenants/{tenant_id}", status_code=202, responses=_PROBLEMS)
async def delete_tenant(tenant_id: str, svc: ServicesDep) -> Response:
    await svc.tenants.delete(tenant_id)
    return Response(status_code=202)


@router.post(
    "/tenants/{tenant_id}/portal-links",
    status_code=201,
    response_model=schemas.PortalLink,
    responses=_PROBLEMS,
)
async def create_portal_link(
    tenant_id: str, request: Request, svc: ServicesDep, body: schemas.PortalLinkCreate | None = None
) -> schemas.PortalLink:
    """A signed link that signs a person into the console confined to this
    tenant until ``expires_at`` (absolute, on ``EVENTRELAY_PUBLIC_URL`` or this
    request's own scheme and host)."""
    tenant = await svc.tenants.get(tenant_id)
    expires_in = (body or schemas.PortalLinkCreate()).expires_in
    params, expires_at = await svc.console.portal_link(tenant.id, expires_in)
    base = svc.settings.public_url or f"{request.url.scheme}://{request.url.netloc}"
    return schemas.PortalLink(
        url=f"{base.rstrip('/')}/console/portal?{urlencode(params)}",
        expires_at=rfc3339(expires_at) or "",
    )
