"""``/v1/tokens``: issue and revoke API tokens (admin only).

A tenant's admin token issues tokens confined to its own tenant and revokes
only those; a global admin issues global tokens or, with ``tenant_id``, tokens
of any tenant.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from app.api import schemas
from app.api.deps import AdminCaller, ServicesDep
from app.domain.events import rfc3339
from app.errors import Forbidden, UnknownTenant

router = APIRouter(prefix="/v1", tags=["tokens"])
_PROBLEMS: dict[int | str, dict[str, object]] = {
    s: {"model": schemas.Problem} for s in (401, 403, 404, 422)
}


# A global token's answer is what it always was: no ``tenant_id`` key.
@router.post(
    "/tokens",
    status_code=201,
    response_model=schemas.TokenCreated,
    response_model_exclude_none=True,
    responses=_PROBLEMS,
)
async def create_token(
    body: schemas.TokenCreate, svc: ServicesDep, caller: AdminCaller
) -> schemas.TokenCreated:
    tenant_id = caller.token.tenant_id
    if tenant_id is not None:
        if body.tenant_id is not None and body.tenant_id != tenant_id:
            raise Forbidden("a tenant's token can issue tokens of its own tenant only")
    elif body.tenant_id is not None:
        if await svc.tenants.active(body.tenant_id) is None:
            raise UnknownTenant(f"no tenant {body.tenant_id}")
        tenant_id = body.tenant_id
    issued = await svc.auth.issue(body.scope, body.description, tenant_id)
    return schemas.TokenCreated(
        id=issued.id, token=issued.token, scope=issued.scope, tenant_id=issued.tenant_id
    )


@router.get("/tokens", response_model=schemas.TokenPage, responses=_PROBLEMS)
async def list_tokens(
    svc: ServicesDep,
    caller: AdminCaller,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, object]:
    """Active tokens: a tenant admin's own tenant's, a global admin's all."""
    page, last = await svc.auth.list_page(
        tenant_id=caller.token.tenant_id, after_id=cursor, limit=limit
    )
    items = [
        {
            "id": t.id,
            "scope": t.scope,
            "description": t.description,
            "created_at": rfc3339(t.created_at),
            "tenant_id": t.tenant_id,
        }
        for t in page
    ]
    return {"items": items, "next_cursor": last}


@router.delete("/tokens/{token_id}", status_code=204, responses=_PROBLEMS)
async def revoke_token(token_id: str, svc: ServicesDep, caller: AdminCaller) -> Response:
    await svc.auth.revoke(token_id, caller.token.tenant_id)
    return Response(status_code=204)
