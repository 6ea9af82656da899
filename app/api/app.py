"""``create_app(settings)``: the ASGI application, built fresh for each caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

from app import __version__
from app.api import dlq, event_types, events, health, openapi, problems, subscriptions, tokens
from app.api.hot_path import IngestHotPath, find_route
from app.api.http_metrics import HttpMetrics
from app.api.middleware import RequestTelemetry
from app.domain.event_schemas import SchemaCreate
from app.domain.events import BatchInput, EventInput
from app.gauges import DatabaseGauges
from app.metrics import Metrics
from app.services.auth import Authenticator
from app.services.dlq import DeadLetterService
from app.services.ingest import IngestService
from app.services.schemas import SchemaService
from app.services.subscriptions import SubscriptionService
from app.settings import Settings
from app.store.database import Database, open_database
from app.worker.worker import DeliveryWorker, worker_config

from .state import Services

DESCRIPTION = (
    "Durable HTTP event ingestion with signed, retried, per-key ordered webhook delivery "
    "and a dead-letter queue."
)


def build_services(
    settings: Settings,
    db: Database,
    metrics: Metrics,
    wake: Callable[[], None],
    changed: Callable[[str], None],
) -> Services:
    writers = settings.ingest_writers or (1 if db.is_sqlite else 4)
    schemas = SchemaService(db)
    ingest = IngestService(
        db,
        require_idempotency_key=settings.require_idempotency_key,
        idempotency_ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
        writers=writers,
        on_flush=metrics.group_commit_batch.observe,
        on_accepted=metrics.accepted,
        on_deliveries=wake,
        schemas=schemas,
    )
    return Services(
        settings=settings,
        db=db,
        auth=Authenticator(db, settings.admin_token),
        ingest=ingest,
        subscriptions=SubscriptionService(
            db,
            allow_private_targets=settings.allow_private_targets,
            wake_workers=wake,
            changed=changed,
        ),
        dlq=DeadLetterService(db, wake_workers=wake),
        metrics=metrics,
        schemas=schemas,
    )


def create_app(settings: Settings, *, worker: bool = False) -> FastAPI:
    """The API; with ``worker=True`` a delivery worker runs in the same process."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = open_database(settings.database_url)
        embedded = DeliveryWorker(db, worker_config(settings), metrics) if worker else None
        svc = build_services(
            settings,
            db,
            metrics,
            embedded.wake if embedded else _nothing,
            embedded.subscription_changed if embedded else _ignore,
        )
        gauges = DatabaseGauges(db, circuit=worker_config(settings).circuit)
        metrics.registry.register(gauges)
        gauges.start()
        svc.ingest.start()
        if embedded is not None:
            await embedded.start()
        app.state.services = svc
        try:
            yield
        finally:
            await svc.ingest.stop()
            if embedded is not None:
                await embedded.stop()
            await gauges.stop()
            metrics.registry.unregister(gauges)
            await db.dispose()

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
    app.include_router(event_types.router)
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
    app.add_middleware(RequestTelemetry, metrics=http_metrics)
    Instrumentator(registry=metrics.registry).expose(app, include_in_schema=False)
    openapi.install(app, [EventInput, BatchInput, SchemaCreate])
    return app


def _nothing() -> None:
    return None


def _ignore(_: str) -> None:
    return None
