"""``create_app(settings)``: the ASGI application, built fresh for each caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

from app import __version__
from app.api import events, health, openapi, problems, tokens
from app.domain.events import BatchInput, EventInput
from app.metrics import Metrics
from app.services.auth import Authenticator
from app.services.ingest import IngestService
from app.settings import Settings
from app.store.database import Database, open_database

from .state import Services

# Extra work to run beside the API for the app's lifetime (the embedded worker).
Companion = Callable[[Services], Awaitable[Callable[[], Awaitable[None]]]]

DESCRIPTION = (
    "Durable HTTP event ingestion with signed, retried, per-key ordered webhook delivery "
    "and a dead-letter queue."
)


def build_services(settings: Settings, db: Database, metrics: Metrics) -> Services:
    writers = settings.ingest_writers or (1 if db.is_sqlite else 4)
    ingest = IngestService(
        db,
        require_idempotency_key=settings.require_idempotency_key,
        idempotency_ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
        writers=writers,
        on_flush=metrics.group_commit_batch.observe,
        on_accepted=metrics.accepted,
    )
    return Services(
        settings=settings,
        db=db,
        auth=Authenticator(db, settings.admin_token),
        ingest=ingest,
        metrics=metrics,
    )


def create_app(settings: Settings, *, companions: tuple[Companion, ...] = ()) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = open_database(settings.database_url)
        svc = build_services(settings, db, metrics)
        svc.ingest.start()
        app.state.services = svc
        stoppers = [await start(svc) for start in companions]
        try:
            yield
        finally:
            for stop in reversed(stoppers):
                await stop()
            await svc.ingest.stop()
            await db.dispose()

    app = FastAPI(
        title="eventrelay",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    problems.install(app)
    app.include_router(events.router)
    app.include_router(tokens.router)
    app.include_router(health.router)
    Instrumentator(registry=metrics.registry, excluded_handlers=["/metrics"]).instrument(
        app
    ).expose(app, include_in_schema=False)
    openapi.install(app, [EventInput, BatchInput])
    return app
