"""What the lifespan builds and the routers use, as one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.metrics import Metrics
from app.services.auth import Authenticator
from app.services.dlq import DeadLetterService
from app.services.ingest import IngestService
from app.services.schemas import SchemaService
from app.services.subscriptions import SubscriptionService
from app.settings import Settings
from app.store.database import Database


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    auth: Authenticator
    ingest: IngestService
    subscriptions: SubscriptionService
    dlq: DeadLetterService
    metrics: Metrics
    schemas: SchemaService


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain ``def`` dependency in its thread pool.
    found: Services = request.app.state.services
    return found
