"""Dependencies shared by the routers: the services and scope checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.state import Services, services
from app.domain.tokens import Scope
from app.store.tokens import TokenRecord

ServicesDep = Annotated[Services, Depends(services)]


async def _authorize(request: Request, scope: Scope) -> TokenRecord:
    return await services(request).auth.authenticate(request.headers.get("authorization"), scope)


async def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TokenRecord:
    return await _authorize(request, Scope.ADMIN)


async def require_ingest(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TokenRecord:
    return await _authorize(request, Scope.INGEST)


AdminDep = Depends(require_admin)
IngestDep = Depends(require_ingest)
