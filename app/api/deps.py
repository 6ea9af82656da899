"""Dependencies shared by the routers: the services, the token check and the
tenant a request acts on (:class:`~app.services.tenants.Caller`).

Every tenant-aware route takes a ``Caller``: the token, checked for its scope,
and the tenant chosen by ``Eventrelay-Tenant``, the token's own tenant or
``default`` (``TenantService.resolve``). The console reuses :func:`caller`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.state import Services, services
from app.domain.tokens import Scope
from app.services.tenants import Caller

ServicesDep = Annotated[Services, Depends(services)]

TenantHeader = Annotated[
    str | None,
    Header(
        alias="Eventrelay-Tenant",
        description="The tenant to act on (default: the token's own tenant, else `default`).",
    ),
]


async def caller(request: Request, scope: Scope, tenant_header: str | None) -> Caller:
    """The request's token (401, or 403 for its scope) and its tenant (403 for
    a confined token naming another tenant, 404 for an unknown one)."""
    svc: Services = request.app.state.services
    token = await svc.auth.authenticate(request.headers.get("authorization"), scope)
    return Caller(token, await svc.tenants.resolve(token, tenant_header))


async def admin_caller(request: Request, tenant: TenantHeader = None) -> Caller:
    return await caller(request, Scope.ADMIN, tenant)


async def reader_caller(request: Request, tenant: TenantHeader = None) -> Caller:
    """Any valid token (ingest or admin): for the shared catalogue of event types."""
    return await caller(request, Scope.INGEST, tenant)


async def global_admin(request: Request, tenant: TenantHeader = None) -> Caller:
    """A global admin token: tenant management and changes to the catalogue."""
    found = await caller(request, Scope.ADMIN, tenant)
    found.require_global()
    return found


AdminCaller = Annotated[Caller, Depends(admin_caller)]
ReaderCaller = Annotated[Caller, Depends(reader_caller)]
GlobalAdmin = Annotated[Caller, Depends(global_admin)]
AdminDep = Depends(admin_caller)
ReaderDep = Depends(reader_caller)
GlobalAdminDep = Depends(global_admin)
