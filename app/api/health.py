"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api import schemas
from app.api.deps import ServicesDep
from app.api.problems import problem_body, problem_response

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
    readiness = await svc.health.readiness()
    if not readiness.ready:
        return problem_response(
            problem_body(
                503, "Service Unavailable", readiness.detail, "urn:eventrelay:problem:not-ready"
            )
        )
    return schemas.Readiness(status="ready", database="ok", migration=readiness.revision)
