"""``/v1/tokens``: issue and revoke API tokens (admin only)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api import schemas
from app.api.deps import AdminDep, ServicesDep

router = APIRouter(prefix="/v1", tags=["tokens"], dependencies=[AdminDep])
_PROBLEMS: dict[int | str, dict[str, object]] = {
    s: {"model": schemas.Problem} for s in (401, 403, 404, 422)
}


@router.post("/tokens", status_code=201, response_model=schemas.TokenCreated, responses=_PROBLEMS)
async def create_token(body: schemas.TokenCreate, svc: ServicesDep) -> schemas.TokenCreated:
    issued = await svc.auth.issue(body.scope, body.description)
    return schemas.TokenCreated(id=issued.id, token=issued.token, scope=issued.scope)


@router.delete("/tokens/{token_id}", status_code=204, responses=_PROBLEMS)
async def revoke_token(token_id: str, svc: ServicesDep) -> Response:
    await svc.auth.revoke(token_id)
    return Response(status_code=204)
