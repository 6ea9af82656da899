"""The services the composition root (app.main) builds, as one typed object
that the API and the console both use."""

from __future__ import annotations

from dataclasses import dataclass

from app.services.auth import Authenticator
from app.services.console import ConsoleSessions
from app.services.dlq import DeadLetterService
from app.services.events import EventService
from app.services.health import HealthService
from app.services.ingest import IngestService
from app.services.overview import OverviewService
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
    console: ConsoleSessions
    overview: OverviewService
    tracer: Tracer | None = None  # OpenTelemetry spans, when the OTEL_* variables ask
