"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api import schemas
from app.api.deps import ServicesDep
from app.api.problems import problem_body, problem_response
from app.errors import StoreUnavailable
from app.store.migrations import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health)
async def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    response_model=schemas.Readiness,
    responses={503: {"model": schemas.Problem}},
)
async def readyz(svc: ServicesDep) -> schemas.Readiness | Response:
    try:
        revision = await current_revision(svc.db)
    except StoreUnavailable as exc:
        return problem_response(
            problem_body(503, "Service Unavailable", exc.detail, "urn:eventrelay:problem:not-ready")
        )
    if revision != head_revision():
        detail = f"the database is at migration {revision}, not {head_revision()}"
        return problem_response(
            problem_body(503, "Service Unavailable", detail, "urn:eventrelay:problem:not-ready")
        )
    return schemas.Readiness(status="ready", database="ok", migration=revision)
