"""``/v1/events``: ingest (single and batch), read back, stats."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from app.api import schemas, shapes
from app.api.body import read_json
from app.api.deps import AdminDep, IngestDep, ServicesDep
from app.api.openapi import json_body
from app.api.pagination import decode_cursor, encode_cursor
from app.api.problems import PROBLEM_JSON
from app.domain.events import BatchInput, EventInput, rfc3339
from app.domain.idempotency import parse_key
from app.errors import NotFound
from app.store import dlq as dlq_store
from app.store import events as store
from app.store.ingest import Accepted

router = APIRouter(prefix="/v1", tags=["events"])

_PROBLEMS: dict[int | str, dict[str, object]] = {
    status: {"model": schemas.Problem, "content": {PROBLEM_JSON: {}}}
    for status in (400, 401, 403, 409, 413, 415, 422, 503)
}


def _accepted(accepted: Accepted) -> Response:
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else None
    return Response(accepted.body, status_code=202, media_type="application/json", headers=headers)


@router.post(
    "/events",
    status_code=202,
    dependencies=[IngestDep],
    response_model=schemas.EventAccepted,
    responses=_PROBLEMS,
    openapi_extra=json_body(EventInput),
    summary="Ingest one event",
)
async def post_event(
    request: Request,
    svc: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    key = parse_key(idempotency_key) if idempotency_key is not None else None
    document = await read_json(request, svc.settings.max_payload_bytes)
    return _accepted(await svc.ingest.ingest_one(document, key))


@router.post(
    "/events/batch",
    status_code=200,
    dependencies=[IngestDep],
    response_model=schemas.BatchAccepted,
    responses=_PROBLEMS,
    openapi_extra=json_body(BatchInput),
    summary="Ingest up to 500 events atomically",
)
async def post_batch(request: Request, svc: ServicesDep) -> Response:
    document = await read_json(request, svc.settings.max_payload_bytes)
    accepted = await svc.ingest.ingest_batch(document)
    body = {"items": [{"id": a.event_id, "replayed": a.replayed} for a in accepted]}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/events",
    dependencies=[AdminDep],
    response_model=schemas.EventPage,
    responses=_PROBLEMS,
    summary="List events, newest first by default",
)
async def list_events(
    svc: ServicesDep,
    type: Annotated[str | None, Query(max_length=200)] = None,
    key: Annotated[str | None, Query(max_length=200)] = None,
    order: Literal["asc", "desc"] = "desc",
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    page, last = await store.list_events(
        svc.db,
        event_type=type,
        key=key,
        order=order,
        after_seq=decode_cursor(cursor),
        limit=limit,
    )
    body = {"items": [shapes.event_summary(e) for e in page], "next_cursor": encode_cursor(last)}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/events/{event_id}",
    dependencies=[AdminDep],
    response_model=schemas.EventOut,
    responses=_PROBLEMS | {404: {"model": schemas.Problem}},
    summary="One event with the state of each of its deliveries",
)
async def get_event(event_id: str, svc: ServicesDep) -> Response:
    event = await store.get_event(svc.db, event_id)
    if event is None:
        raise NotFound(f"no event {event_id}")
    deliveries = await store.event_deliveries(svc.db, event_id)
    body = shapes.event_summary(event) | {
        "deliveries": [
            {
                "id": d.id,
                "subscription_id": d.subscription_id,
                "status": d.status,
                "attempts": d.attempts,
                "next_attempt_at": rfc3339(d.next_attempt_at),
                "last_status_code": d.last_status_code,
            }
            for d in deliveries
        ]
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/events/{event_id}/attempts",
    dependencies=[AdminDep],
    response_model=schemas.EventAttempts,
    responses=_PROBLEMS | {404: {"model": schemas.Problem}},
    summary="Every delivery attempt made for an event",
)
async def get_event_attempts(event_id: str, svc: ServicesDep) -> Response:
    if await store.get_event(svc.db, event_id) is None:
        raise NotFound(f"no event {event_id}")
    attempts = await dlq_store.attempts_of_event(svc.db, event_id)
    body = {"items": [shapes.attempt(a) | {"delivery_id": a.delivery_id} for a in attempts]}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/stats",
    dependencies=[AdminDep],
    response_model=schemas.StatsOut,
    responses=_PROBLEMS,
    summary="Exact counts of events, subscriptions and deliveries by status",
)
async def get_stats(svc: ServicesDep) -> schemas.StatsOut:
    stats = await store.stats(svc.db)
    return schemas.StatsOut(
        events=stats.events,
        subscriptions=stats.subscriptions,
        deliveries=schemas.DeliveryCounts(**stats.deliveries),
    )
