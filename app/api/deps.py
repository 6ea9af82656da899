"""Dependencies shared by the routers: the services and the admin check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.state import Services, services
from app.domain.tokens import Scope
from app.services.auth import TokenRecord

ServicesDep = Annotated[Services, Depends(services)]


async def require_admin(request: Request) -> TokenRecord:
    svc: Services = request.app.state.services
    return await svc.auth.authenticate(request.headers.get("authorization"), Scope.ADMIN)


AdminDep = Depends(require_admin)
