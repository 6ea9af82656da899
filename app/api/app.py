"""``build_api``: the ASGI application around the routers, given its lifespan.

The lifespan (built by the composition root, :mod:`app.main`) puts the
services on ``app.state.services``; the API builds nothing below itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

from app import __version__
from app.api import (
    dlq,
    event_types,
    events,
    filters,
    health,
    openapi,
    problems,
    subscriptions,
    tenants,
    tokens,
)
from app.api.hot_path import IngestHotPath, find_route
from app.api.http_metrics import HttpMetrics
from app.api.middleware import RequestTelemetry
from app.domain.event_schemas import SchemaCreate
from app.domain.events import BatchInput, EventInput
from app.metrics import Metrics
from app.precedence import RequestsFirst

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

DESCRIPTION = (
    "Durable HTTP event ingestion with signed, retried, per-key ordered webhook delivery "
    "and a dead-letter queue."
)


def build_api(
    *, lifespan: Lifespan, metrics: Metrics, requests_first: RequestsFirst | None = None
) -> FastAPI:
    """The routers, the ingest hot path, problem details, metrics and OpenAPI;
    ``requests_first``: the embedded worker's, told of every request in flight."""
    app = FastAPI(
        title="eventrelay",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # eventrelay exports Prometheus metrics; FastAPI's own OpenTelemetry
        # hooks would only cost time on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    problems.install(app)
    app.include_router(events.router)
    app.include_router(subscriptions.router)
    app.include_router(dlq.router)
    app.include_router(tokens.router)
    app.include_router(tenants.router)
    app.include_router(event_types.router)
    app.include_router(filters.router)
    app.include_router(health.router)
    # Middlewares run outermost last added: request IDs and HTTP metrics, then
    # the ingest hot path. prometheus-fastapi-instrumentator serves /metrics; its
    # HTTP metric families are recorded by HttpMetrics (app/api/http_metrics.py).
    app.add_middleware(
        IngestHotPath,
        method="POST",
        path="/v1/events",
        endpoint=events.post_event,
        route=find_route(events.router.routes, "POST", "/v1/events"),
    )
    http_metrics = HttpMetrics(registry=metrics.registry, excluded=["/metrics"])
    app.add_middleware(RequestTelemetry, metrics=http_metrics, requests_first=requests_first)
    Instrumentator(registry=metrics.registry).expose(app, include_in_schema=False)
    openapi.install(app, [EventInput, BatchInput, SchemaCreate])
    return app
