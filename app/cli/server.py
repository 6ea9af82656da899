"""``eventrelay serve``, ``worker`` and ``migrate``: the processes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from typing import Any

import uvicorn
from prometheus_client import start_http_server

from app.api.app import create_app
from app.errors import StoreUnavailable
from app.gauges import DatabaseGauges
from app.logging import configure as configure_logging
from app.metrics import Metrics
from app.services.auth import ensure_admin_token
from app.settings import Settings
from app.store.database import Database, open_database
from app.store.migrations import current_revision, head_revision, upgrade_head
from app.worker.sender import http_senders
from app.worker.worker import DeliveryWorker, worker_config

log = logging.getLogger("eventrelay")

GRACEFUL_SHUTDOWN_SECONDS = 10


def add_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the API (and, by default, the delivery worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--no-worker", action="store_true", help="API only; run `eventrelay worker` separately"
    )
    serve.set_defaults(run=_run_serve)
    worker = commands.add_parser("worker", help="run a delivery worker without the API")
    worker.set_defaults(run=_run_worker_command)
    migrate = commands.add_parser(
        "migrate", help="apply database migrations (alembic upgrade head)"
    )
    migrate.set_defaults(run=_run_migrate)


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _run_migrate(_: argparse.Namespace) -> int:
    settings = _settings()
    upgrade_head(settings.database_url)
    log.info("migrations applied")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    return _serve(_settings(), args.host, args.port, worker=not args.no_worker)


def _run_worker_command(_: argparse.Namespace) -> int:
    return _worker(_settings())


def _serve(settings: Settings, host: str, port: int, *, worker: bool) -> int:
    upgrade_head(settings.database_url)
    token = asyncio.run(_bootstrap_token(settings))
    if token is not None:
        log.warning("admin token: %s", token, extra={"admin_token": token})
    app = create_app(settings, worker=worker)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )
    _freeze_startup_objects()
    server = uvicorn.Server(config)
    # uvicorn re-raises SIGTERM after its graceful shutdown; by then the work is
    # done, so that second delivery only has to end the process with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return 0 if server.started else 1


def _freeze_startup_objects() -> None:
    # Everything imported and built so far lives as long as the process: keep
    # it out of the collector's way, or each full collection stalls the loop.
    gc.collect()
    gc.freeze()


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


async def _bootstrap_token(settings: Settings) -> str | None:
    db = open_database(settings.database_url)
    try:
        return await ensure_admin_token(db, settings.admin_token)
    finally:
        await db.dispose()


def _worker(settings: Settings) -> int:
    import uvloop

    uvloop.run(_run_worker(settings))
    return 0


async def _run_worker(settings: Settings) -> None:
    # A worker acknowledges no event: a lost outcome only means a redelivery.
    db = open_database(settings.database_url, durable_commits=False)
    try:
        await _wait_for_migrations(db)
        metrics = Metrics()
        config = worker_config(settings)
        worker = DeliveryWorker(db, config, metrics, senders=http_senders(config))
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
        _freeze_startup_objects()
        await worker.start()
        await stop.wait()
        log.info("stopping: finishing in-flight deliveries")
        await worker.stop()
        if gauges is not None:
            await gauges.stop()
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
        await asyncio.sleep(2)
