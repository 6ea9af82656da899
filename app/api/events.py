"""``/v1/events``: ingest (single and batch), read back, stats."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime
from starlette.responses import Response

from app.api import schemas, shapes
from app.api.body import headers, media_type, read_json, read_limited
from app.api.deps import AdminCaller, ServicesDep
from app.api.openapi import REF as openapi_ref
from app.api.openapi import json_body
from app.api.pagination import decode_cursor, encode_cursor
from app.api.problems import PROBLEM_JSON
from app.api.state import Services
from app.domain import cloudevents, jsonbody, tracecontext
from app.domain.delivery_status import DeliveryStatus
from app.domain.events import BatchInput, EventInput, rfc3339
from app.domain.idempotency import Accepted, parse_key
from app.domain.tenants import TENANT_HEADER
from app.domain.tokens import Scope
from app.errors import BadRequest, EventRelayError
from app.services.events import Stats
from app.services.tenants import Tenant
from app.tracing import RequestTrace

router = APIRouter(prefix="/v1", tags=["events"])

_PROBLEMS: dict[int | str, dict[str, object]] = {
    status: {"model": schemas.Problem, "content": {PROBLEM_JSON: {}}}
    for status in (400, 401, 403, 409, 413, 415, 422, 503)
}


def _accepted(accepted: Accepted) -> Response:
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else None
    return Response(accepted.body, status_code=202, media_type="application/json", headers=headers)


def _batch_accepted(accepted: list[Accepted]) -> Response:
    body = {"items": [{"id": a.event_id, "replayed": a.replayed} for a in accepted]}
    return Response(orjson.dumps(body), media_type="application/json")


def _cloudevents_body() -> dict[str, object]:
    """The request body of ``POST /v1/events``: an event, or CloudEvents (structured, batch)."""
    extra = json_body(EventInput)
    schema = cloudevents.CloudEventDocument.model_json_schema(ref_template=openapi_ref)
    content = extra["requestBody"]["content"]
    content[cloudevents.STRUCTURED] = {"schema": schema}
    content[cloudevents.BATCH] = {"schema": {"type": "array", "items": schema, "maxItems": 500}}
    return extra


async def _cloudevent_answer(
    request: Request, svc: Services, key: str | None, tenant: Tenant, trace: RequestTrace
) -> Response:
    """Ingest CloudEvents in the mode the request is in (see app.domain.cloudevents)."""
    limit = svc.settings.max_payload_bytes
    media = media_type(request)
    if media == cloudevents.STRUCTURED:
        event = cloudevents.parse_structured(_json(await read_limited(request, limit)))
        return _accepted(await svc.ingest.ingest_cloudevent(event, key, tenant, trace))
    if media == cloudevents.BATCH:
        events = cloudevents.parse_batch(_json(await read_limited(request, limit)))
        return _batch_accepted(await svc.ingest.ingest_cloudevent_batch(events, tenant, trace))
    headers = {name.lower(): value for name, value in request.headers.items()}
    event = cloudevents.parse_binary(headers, await read_limited(request, limit))
    return _accepted(await svc.ingest.ingest_cloudevent(event, key, tenant, trace))


def _incoming_trace(request: Request) -> tracecontext.TraceContext | None:
    """The request's W3C trace context: one valid ``traceparent`` (a repeated one is
    none) with its ``tracestate`` headers combined, as W3C Trace Context says."""
    traceparent = headers(request).get("traceparent")
    if traceparent is None:
        return None
    raw = request.scope["headers"]
    if sum(1 for name, _ in raw if name == b"traceparent") > 1:
        return None
    states = [value.decode("latin-1") for name, value in raw if name == b"tracestate"]
    return tracecontext.parse(traceparent, ",".join(states) if states else None)


Ingest = Callable[[Request, Services, Tenant, RequestTrace], Awaitable[Response]]


async def _traced(
    request: Request, svc: Services, tenant: Tenant, route: str, ingest: Ingest
) -> Response:
    """Run ``ingest`` in the request's trace context; with a tracer, in a span of
    its own, the child of that context (a new trace without one)."""
    incoming = _incoming_trace(request)
    tracer = svc.tracer
    if tracer is None:
        trace = RequestTrace(incoming or tracecontext.new_trace())
        return await ingest(request, svc, tenant, trace)
    span = tracer.ingest(route, incoming)
    try:
        response = await ingest(request, svc, tenant, RequestTrace(span.context, span))
    except EventRelayError as exc:
        span.end(exc.status, exc)
        raise
    except BaseException as exc:
        span.end(500, exc)
        raise
    span.end(response.status_code)
    return response


def _json(body: bytes) -> object:
    if not body:
        raise BadRequest("the body is empty")
    return jsonbody.parse(body)


def _is_cloudevent(request: Request) -> bool:
    return media_type(request) in (cloudevents.STRUCTURED, cloudevents.BATCH) or (
        "ce-specversion" in headers(request)
    )


# The ingest routes are the hot path: they take only the request and do auth
# and headers themselves, so FastAPI has no dependencies to solve per call.
# The header is declared here for the OpenAPI document instead.
_IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Idempotency-Key"},
}
_TENANT_PARAMETER = {
    "in": "header",
    "name": "Eventrelay-Tenant",
    "required": False,
    "description": "The tenant to act on (default: the token's own tenant, else `default`).",
    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Eventrelay-Tenant"},
}


_TRACE_PARAMETERS = [
    {
        "in": "header",
        "name": "traceparent",
        "required": False,
        "description": "W3C Trace Context; stored with the event (an invalid one is ignored)",
        "schema": {"type": "string"},
    },
    {
        "in": "header",
        "name": "tracestate",
        "required": False,
        "description": "W3C Trace Context; passed on with every delivery attempt",
        "schema": {"type": "string"},
    },
]


async def _ingest_services(request: Request) -> tuple[Services, Tenant]:
    svc: Services = request.app.state.services
    sent = headers(request)
    token = await svc.auth.authenticate(sent.get("authorization"), Scope.INGEST)
    return svc, await svc.tenants.resolve(token, sent.get(TENANT_HEADER))


@router.post(
    "/events",
    status_code=202,
    response_model=schemas.EventAccepted,
    responses=_PROBLEMS
    | {200: {"model": schemas.BatchAccepted, "description": "A CloudEvents batch was accepted"}},
    openapi_extra=_cloudevents_body()
    | {"parameters": [_IDEMPOTENCY_KEY_PARAMETER, _TENANT_PARAMETER, *_TRACE_PARAMETERS]},
    summary="Ingest one event, or CloudEvents (structured, binary, batch)",
)
async def post_event(request: Request) -> Response:
    svc, tenant = await _ingest_services(request)
    return await _traced(request, svc, tenant, "/v1/events", _ingest_event)


async def _ingest_event(
    request: Request, svc: Services, tenant: Tenant, trace: RequestTrace
) -> Response:
    idempotency_key = headers(request).get("idempotency-key")
    key = parse_key(idempotency_key) if idempotency_key is not None else None
    if _is_cloudevent(request):
        return await _cloudevent_answer(request, svc, key, tenant, trace)
    document = await read_json(request, svc.settings.max_payload_bytes)
    return _accepted(await svc.ingest.ingest_one(document, key, tenant, trace))


@router.post(
    "/events/batch",
    status_code=200,
    response_model=schemas.BatchAccepted,
    responses=_PROBLEMS,
    openapi_extra=json_body(BatchInput) | {"parameters": [_TENANT_PARAMETER, *_TRACE_PARAMETERS]},
    summary="Ingest up to 500 events atomically",
)
async def post_batch(request: Request) -> Response:
    svc, tenant = await _ingest_services(request)
    return await _traced(request, svc, tenant, "/v1/events/batch", _ingest_batch)


async def _ingest_batch(
    request: Request, svc: Services, tenant: Tenant, trace: RequestTrace
) -> Response:
    document = await read_json(request, svc.settings.max_payload_bytes)
    return _batch_accepted(await svc.ingest.ingest_batch(document, tenant, trace))


@router.get(
    "/events",
    response_model=schemas.EventPage,
    responses=_PROBLEMS,
    summary="List events, newest first by default",
)
async def list_events(
    svc: ServicesDep,
    caller: AdminCaller,
    type: Annotated[str | None, Query(max_length=200)] = None,
    key: Annotated[str | None, Query(max_length=200)] = None,
    order: Literal["asc", "desc"] = "desc",
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    delivery_status: DeliveryStatus | None = None,
) -> Response:
    page, last = await svc.events.list_page(
        caller.tenant_id,
        event_type=type,
        key=key,
        order=order,
        after_seq=decode_cursor(cursor),
        limit=limit,
        since=since,
        until=until,
        delivery_status=delivery_status,
    )
    body = {"items": [shapes.event_summary(e) for e in page], "next_cursor": encode_cursor(last)}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/events/{event_id}",
    response_model=schemas.EventOut,
    responses=_PROBLEMS | {404: {"model": schemas.Problem}},
    summary="One event with the state of each of its deliveries",
)
async def get_event(event_id: str, svc: ServicesDep, caller: AdminCaller) -> Response:
    detail = await svc.events.get(caller.tenant_id, event_id)
    body = shapes.event_summary(detail.event) | {
        "deliveries": [
            {
                "id": d.id,
                "subscription_id": d.subscription_id,
                "status": d.status,
                "attempts": d.attempts,
                "next_attempt_at": rfc3339(d.next_attempt_at),
                "last_status_code": d.last_status_code,
            }
            for d in detail.deliveries
        ]
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/events/{event_id}/attempts",
    response_model=schemas.EventAttempts,
    responses=_PROBLEMS | {404: {"model": schemas.Problem}},
    summary="Every delivery attempt made for an event",
)
async def get_event_attempts(event_id: str, svc: ServicesDep, caller: AdminCaller) -> Response:
    attempts = await svc.events.attempts(caller.tenant_id, event_id)
    body = {"items": [shapes.attempt(a) | {"delivery_id": a.delivery_id} for a in attempts]}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/stats",
    response_model=schemas.StatsOut,
    responses=_PROBLEMS,
    summary="Exact counts of the tenant's events, subscriptions and deliveries by status",
)
async def get_stats(svc: ServicesDep, caller: AdminCaller) -> schemas.StatsOut:
    return stats_out(await svc.events.stats(caller.tenant_id))


def stats_out(stats: Stats) -> schemas.StatsOut:
    return schemas.StatsOut(
        events=stats.events,
        subscriptions=stats.subscriptions,
        deliveries=schemas.DeliveryCounts(**stats.deliveries),
    )
