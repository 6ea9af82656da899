"""The composition root: the one place that builds the database, the services,
the delivery worker and the ASGI app from settings, and wires them together.

``create_app(settings)`` is the API (with ``worker=True``, a delivery worker in
the same process, as ``eventrelay serve`` runs it); :func:`run_worker` is the
``eventrelay worker`` process. Nothing below this module builds another layer:
the API gets its services ready-made, and the services wake the worker through
the callbacks given here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from prometheus_client import start_http_server

from app.api.app import build_api
from app.console.app import build_console
from app.errors import StoreUnavailable
from app.gauges import DatabaseGauges
from app.metrics import Metrics
from app.precedence import RequestsFirst
from app.services.auth import Authenticator, ensure_admin_token
from app.services.console import ConsoleSessions
from app.services.container import Services
from app.services.dlq import DeadLetterService
from app.services.events import EventService
from app.services.health import HealthService
from app.services.ingest import IngestService
from app.services.overview import OverviewService
from app.services.schemas import SchemaService
from app.services.subscriptions import SubscriptionService
from app.services.tenants import TenantService
from app.settings import Settings
from app.store.database import Database, open_database
from app.store.doorbell import Doorbell
from app.store.migrations import current_revision, head_revision
from app.store.notify import CHANGED
from app.store.sealed import RESEAL_BATCH, SEALED_TABLES, ResealReport, keys_missing, reseal
from app.tracing import Tracer
from app.tracing import build as build_tracer
from app.worker.destinations import destination_senders
from app.worker.thread import WorkerThread
from app.worker.worker import DeliveryWorker, worker_config

log = logging.getLogger("eventrelay")

MIGRATION_POLL_SECONDS = 2.0


def build_services(
    settings: Settings,
    db: Database,
    metrics: Metrics,
    wake: Callable[[], None],
    changed: Callable[[str], None],
    removal: Callable[[], None] = lambda: None,
    tracer: Tracer | None = None,
) -> Services:
    """The services the API calls; ``wake``, ``changed`` and ``removal`` tell a
    worker in this process that deliveries are due, a subscription changed, or a
    deleted tenant's rows are to be removed."""
    writers = settings.ingest_writers or (1 if db.is_sqlite else 4)
    schemas = SchemaService(db)
    auth = Authenticator(db, settings.admin_token)

    def tenant_deleted(_: str) -> None:
        auth.forget()  # its tokens were revoked
        removal()

    tenants = TenantService(db, deleted=tenant_deleted)
    ingest = IngestService(
        db,
        require_idempotency_key=settings.require_idempotency_key,
        idempotency_ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
        writers=writers,
        on_flush=metrics.group_commit_batch.observe,
        on_accepted=metrics.accepted,
        on_deliveries=wake,
        schemas=schemas,
        limits=tenants,
        tracer=tracer,
    )
    return Services(
        settings=settings,
        auth=auth,
        ingest=ingest,
        events=EventService(db),
        subscriptions=SubscriptionService(
            db,
            allow_private_targets=settings.allow_private_targets,
            wake_workers=wake,
            changed=changed,
            schemas=schemas,
        ),
        dlq=DeadLetterService(db, wake_workers=wake),
        schemas=schemas,
        health=HealthService(db),
        tenants=tenants,
        console=ConsoleSessions(db, auth, bootstrap_token=settings.admin_token is not None),
        overview=OverviewService(db, worker_config(settings).circuit),
        tracer=tracer,
    )


def create_app(settings: Settings, *, worker: bool = False) -> FastAPI:
    """The API; with ``worker=True`` a delivery worker runs in the same process.
    Spans are exported when the OTEL_* variables ask (:func:`app.tracing.build`,
    which raises :class:`app.tracing.TracingUnavailable` if they cannot be)."""
    metrics = Metrics()
    tracer = build_tracer()
    # The embedded worker's thread steps aside while the API has a request
    # in flight (app.precedence).
    requests_first = RequestsFirst() if worker else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keyring = settings.keyring()
        db = open_database(settings.database_url, keyring=keyring)
        config = worker_config(settings)
        # The embedded worker runs on a loop of its own, with engines of its
        # own: on SQLite beside the API's (one writer per process), on
        # PostgreSQL a delivery worker's (app.store.database.open_database).
        embedded = (
            WorkerThread(
                lambda: open_database(
                    db.url, durable_commits=False, worker=True, keyring=keyring, beside=db
                ),
                lambda worker_db: DeliveryWorker(
                    worker_db,
                    config,
                    metrics,
                    senders=destination_senders(config),
                    tracer=tracer,
                    requests_first=requests_first,
                ),
                loop_factory=type(asyncio.get_running_loop()),
            )
            if worker
            else None
        )
        # Without a worker of its own, a SQLite API process rings the doorbell
        # of the worker on its file (PostgreSQL's NOTIFY goes out at commit).
        bell = Doorbell(db.url) if db.is_sqlite and embedded is None else None
        wake: Callable[[], None]
        changed: Callable[[str], None]
        if embedded is not None:
            wake, changed = embedded.wake, embedded.subscription_changed
        elif bell is not None:
            wake, changed = bell.ring, lambda sub: bell.ring(CHANGED + sub)
        else:
            wake, changed = _nothing, _ignore
        svc = build_services(
            settings,
            db,
            metrics,
            wake,
            changed,
            embedded.remove_tenants if embedded else _nothing,
            tracer,
        )
        gauges = DatabaseGauges(db, circuit=config.circuit)
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
            # No cache may start a read once the database is closing.
            for cache in (svc.auth, svc.tenants, svc.schemas):
                await cache.close()
            if embedded is not None:
                await embedded.stop()
            await gauges.stop()
            metrics.registry.unregister(gauges)
            await db.dispose()
            if bell is not None:
                bell.close()
            if tracer is not None:
                await asyncio.to_thread(tracer.shutdown)  # exports what is buffered

    app = build_api(lifespan=lifespan, metrics=metrics, requests_first=requests_first)
    app.mount("/console", build_console(lambda: _services_of(app)))
    return app


def _services_of(app: FastAPI) -> Services:
    found: Services = app.state.services
    return found


async def run_worker(
    settings: Settings, *, before_start: Callable[[], None] = lambda: None
) -> None:
    """``eventrelay worker``: deliver until SIGTERM or SIGINT, then finish in-flight
    deliveries. ``before_start`` runs once everything is built."""
    # A worker acknowledges no event: a lost outcome only means a redelivery.
    tracer = build_tracer()
    db = open_database(
        settings.database_url, durable_commits=False, worker=True, keyring=settings.keyring()
    )
    try:
        await _wait_for_migrations(db)
        await _warn_about_missing_keys(db)
        metrics = Metrics()
        config = worker_config(settings)
        worker = DeliveryWorker(
            db, config, metrics, senders=destination_senders(config), tracer=tracer
        )
        gauges = None
        if settings.worker_metrics_port is not None:
            gauges = DatabaseGauges(db, circuit=config.circuit)
            metrics.registry.register(gauges)
            gauges.start()
            start_http_server(settings.worker_metrics_port, registry=metrics.registry)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        before_start()
        await worker.start()
        await stop.wait()
        log.info("stopping: finishing in-flight deliveries")
        await worker.stop()
        if gauges is not None:
            await gauges.stop()
    finally:
        await db.dispose()
        if tracer is not None:
            await asyncio.to_thread(tracer.shutdown)


async def bootstrap_admin_token(settings: Settings) -> str | None:
    """The first start's admin token, to print once (None when tokens exist)."""
    db = open_database(settings.database_url)
    try:
        return await ensure_admin_token(db, settings.admin_token)
    finally:
        await db.dispose()


async def check_stored_secrets(settings: Settings) -> None:
    """At ``serve``: log an error when stored secrets need keys this process lacks."""
    db = open_database(settings.database_url, keyring=settings.keyring())
    try:
        await _warn_about_missing_keys(db)
    finally:
        await db.dispose()


async def _warn_about_missing_keys(db: Database) -> None:
    missing = await keys_missing(db)
    if missing:
        log.error(
            "%d stored secrets are encrypted with keys EVENTRELAY_ENCRYPTION_KEYS does not"
            " hold (key IDs %s): their subscriptions cannot be signed for until the key is back",
            sum(missing.values()),
            ", ".join(sorted(missing)),
            extra={"missing_key_ids": sorted(missing)},
        )


async def rotate_encryption_key(
    settings: Settings, *, batch: int = RESEAL_BATCH
) -> dict[str, ResealReport]:
    """``eventrelay rotate-encryption-key``: every stored secret sealed again with the
    first key, table by table. ValueError when there is no key or the database is
    not migrated."""
    keyring = settings.keyring()
    if keyring.current is None:
        raise ValueError("EVENTRELAY_ENCRYPTION_KEYS is not set: there is no key to encrypt with")
    db = open_database(settings.database_url, keyring=keyring)
    try:
        if await current_revision(db) != head_revision():
            raise ValueError("the database is not migrated: run `eventrelay migrate` first")
        return {sealed.table: await reseal(db, sealed, batch=batch) for sealed in SEALED_TABLES}
    finally:
        await db.dispose()


async def _wait_for_migrations(db: Database) -> None:
    """A worker does not migrate; it waits until `serve` or `migrate` has."""
    while True:
        try:
            if await current_revision(db) == head_revision():
                return
            log.warning("the database is not migrated yet; waiting for `eventrelay migrate`")
        except StoreUnavailable as exc:
            log.warning("the database is unavailable (%s); retrying", exc.detail)
        await asyncio.sleep(MIGRATION_POLL_SECONDS)


def _nothing() -> None:
    return None


def _ignore(_: str) -> None:
    return None
