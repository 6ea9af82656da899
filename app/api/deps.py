"""Dependencies shared by the routers: the services and scope checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.state import Services, services
from app.domain.tokens import Scope
from app.services.auth import TokenRecord

ServicesDep = Annotated[Services, Depends(services)]


async def _authorize(request: Request, scope: Scope) -> TokenRecord:
    svc: Services = request.app.state.services
    return await svc.auth.authenticate(request.headers.get("authorization"), scope)


async def require_admin(request: Request) -> TokenRecord:
    return await _authorize(request, Scope.ADMIN)


async def require_ingest(request: Request) -> TokenRecord:
    return await _authorize(request, Scope.INGEST)


AdminDep = Depends(require_admin)
IngestDep = Depends(require_ingest)
