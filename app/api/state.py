"""What the composition root (app.main) builds and the routers use, as one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.services.auth import Authenticator
from app.services.dlq import DeadLetterService
from app.services.events import EventService
from app.services.health import HealthService
from app.services.ingest import IngestService
from app.services.schemas import SchemaService
from app.services.subscriptions import SubscriptionService
from app.services.tenants import TenantService
from app.settings import Settings
from app.tracing import Tracer


@dataclass(slots=True)
class Services:
    settings: Settings
    auth: Authenticator
    ingest: IngestService
    events: EventService
    subscriptions: SubscriptionService
    dlq: DeadLetterService
    schemas: SchemaService
    health: HealthService
    tenants: TenantService
    tracer: Tracer | None = None  # OpenTelemetry spans, when the OTEL_* variables ask


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain ``def`` dependency in its thread pool.
    found: Services = request.app.state.services
    return found
