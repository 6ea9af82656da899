"""``/v1/dlq``: the dead-letter queue, for operators."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from app.api import schemas, shapes
from app.api.deps import AdminCaller, ServicesDep
from app.api.pagination import decode_cursor, encode_cursor

router = APIRouter(prefix="/v1", tags=["dead-letter queue"])
_PROBLEMS: dict[int | str, dict[str, object]] = {
    s: {"model": schemas.Problem} for s in (401, 403, 404, 422)
}


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/dlq", response_model=schemas.DeadLetterPage, responses=_PROBLEMS)
async def list_dead_letters(
    svc: ServicesDep,
    caller: AdminCaller,
    subscription_id: Annotated[str | None, Query(max_length=64)] = None,
    event_type: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    page, last = await svc.dlq.list_page(
        caller.tenant_id,
        subscription_id=subscription_id,
        event_type=event_type,
        after_seq=decode_cursor(cursor),
        limit=limit,
    )
    return _json(
        {"items": [shapes.dead_letter(d) for d in page], "next_cursor": encode_cursor(last)}
    )


@router.post("/dlq/redrive", response_model=schemas.RedriveCount, responses=_PROBLEMS)
async def redrive_matching(
    body: schemas.RedriveFilter, svc: ServicesDep, caller: AdminCaller
) -> schemas.RedriveCount:
    count = await svc.dlq.redrive_matching(
        caller.tenant_id,
        subscription_id=body.subscription_id,
        event_type=body.event_type,
        limit=body.limit,
    )
    return schemas.RedriveCount(redriven=count)


@router.get("/dlq/{delivery_id}", response_model=schemas.DeadLetterDetailOut, responses=_PROBLEMS)
async def show_dead_letter(delivery_id: str, svc: ServicesDep, caller: AdminCaller) -> Response:
    detail = await svc.dlq.show(caller.tenant_id, delivery_id)
    return _json(
        shapes.dead_letter(detail.dead_letter)
        | {
            "event": shapes.event_summary(detail.event),
            "attempts": [shapes.attempt(a) for a in detail.attempts],
        }
    )


@router.post(
    "/dlq/{delivery_id}/redrive",
    status_code=202,
    response_model=schemas.Accepted,
    responses=_PROBLEMS,
)
async def redrive_one(delivery_id: str, svc: ServicesDep, caller: AdminCaller) -> Response:
    await svc.dlq.redrive(caller.tenant_id, delivery_id)
    return _json({"status": "pending"}, 202)


@router.delete("/dlq/{delivery_id}", status_code=204, responses=_PROBLEMS)
async def discard(delivery_id: str, svc: ServicesDep, caller: AdminCaller) -> Response:
    await svc.dlq.discard(caller.tenant_id, delivery_id)
    return Response(status_code=204)
