"""``/v1/event-types``: event types and their numbered JSON Schema versions.

Type names may contain ``/``, so ``{name}`` is a path parameter that spans
segments; the routes ending in ``/schemas`` and ``/schemas/{version}`` are
declared first and match first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from app.api import schemas
from app.api.body import read_json
from app.api.deps import GlobalAdminDep, ReaderDep, ServicesDep
from app.api.openapi import json_body
from app.api.pagination import decode_name_cursor, encode_cursor
from app.domain.event_schemas import EventTypeCreate, EventTypePatch, SchemaCreate
from app.domain.events import rfc3339, validation_failed
from app.errors import FieldError, ValidationFailed
from app.services.schemas import EventType

# The catalogue is the installation's, shared by every tenant: every token may
# read it; only a global admin changes it.
router = APIRouter(prefix="/v1", tags=["event types"])
_PROBLEMS: dict[int | str, dict[str, object]] = {
    s: {"model": schemas.Problem} for s in (400, 401, 403, 404, 409, 413, 415, 422)
}


def _out(event_type: EventType) -> dict[str, object]:
    return {
        "name": event_type.name,
        "description": event_type.description,
        "compatibility": event_type.compatibility,
        "latest_version": event_type.latest_version,
        "created_at": rfc3339(event_type.created_at),
    }


@router.post(
    "/event-types",
    status_code=201,
    response_model=schemas.EventTypeOut,
    responses=_PROBLEMS,
    summary="Create an event type",
    dependencies=[GlobalAdminDep],
)
async def create_event_type(body: EventTypeCreate, svc: ServicesDep) -> dict[str, object]:
    return _out(await svc.schemas.create_type(body))


@router.get(
    "/event-types",
    response_model=schemas.EventTypePage,
    responses=_PROBLEMS,
    summary="List event types by name",
    dependencies=[ReaderDep],
)
async def list_event_types(
    svc: ServicesDep,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, object]:
    page, last = await svc.schemas.list_types(after=decode_name_cursor(cursor), limit=limit)
    return {"items": [_out(t) for t in page], "next_cursor": encode_cursor(last)}


@router.get(
    "/event-types/{name:path}/schemas/{version}",
    response_model=schemas.SchemaVersionOut,
    responses=_PROBLEMS,
    summary="One schema version of an event type (a number, or latest)",
    dependencies=[ReaderDep],
)
async def get_schema_version(name: str, version: str, svc: ServicesDep) -> dict[str, object]:
    wanted: int | None = None
    if version != "latest":
        if not version.isdigit() or not 1 <= int(version) <= 2_147_483_647:
            raise ValidationFailed(
                "the version is a positive number or 'latest'",
                [FieldError("path:version", "not a version number or 'latest'")],
            )
        wanted = int(version)
    found, schema = await svc.schemas.get_schema(name, wanted)
    return {"version": found, "schema": schema}


@router.post(
    "/event-types/{name:path}/schemas",
    status_code=201,
    response_model=schemas.SchemaRegistered,
    responses=_PROBLEMS | {200: {"model": schemas.SchemaRegistered}},
    openapi_extra=json_body(SchemaCreate),
    summary="Register the next schema version (200 if an identical one exists)",
    dependencies=[GlobalAdminDep],
)
async def register_schema(name: str, request: Request, svc: ServicesDep) -> Response:
    document = await read_json(request, svc.settings.max_payload_bytes)
    if not isinstance(document, dict):
        raise ValidationFailed("the body must be a JSON object", [FieldError("/", "not an object")])
    try:
        body = SchemaCreate.model_validate(document)
    except ValidationError as exc:
        raise validation_failed(exc) from None
    version, created = await svc.schemas.register(name, body.schema_)
    return Response(
        schemas.SchemaRegistered(version=version).model_dump_json(),
        status_code=201 if created else 200,
        media_type="application/json",
    )


@router.get(
    "/event-types/{name:path}",
    response_model=schemas.EventTypeOut,
    responses=_PROBLEMS,
    summary="One event type",
    dependencies=[ReaderDep],
)
async def get_event_type(name: str, svc: ServicesDep) -> dict[str, object]:
    return _out(await svc.schemas.get_type(name))


@router.patch(
    "/event-types/{name:path}",
    response_model=schemas.EventTypeOut,
    responses=_PROBLEMS,
    summary="Change an event type's description or compatibility mode (for later versions)",
    dependencies=[GlobalAdminDep],
)
async def patch_event_type(name: str, body: EventTypePatch, svc: ServicesDep) -> dict[str, object]:
    return _out(await svc.schemas.update_type(name, body))
