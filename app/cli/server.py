"""``eventrelay serve``, ``worker`` and ``migrate``: the processes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from typing import Any

import uvicorn

from app.cli.config import load_settings
from app.main import bootstrap_admin_token, check_stored_secrets, create_app, run_worker
from app.settings import Settings
from app.store.migrations import upgrade_head
from app.tracing import TracingUnavailable

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


def _run_migrate(_: argparse.Namespace) -> int:
    settings = load_settings()
    upgrade_head(settings.database_url)
    log.info("migrations applied")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    return _serve(load_settings(), args.host, args.port, worker=not args.no_worker)


def _run_worker_command(_: argparse.Namespace) -> int:
    return _worker(load_settings())


def _serve(settings: Settings, host: str, port: int, *, worker: bool) -> int:
    upgrade_head(settings.database_url)
    token = asyncio.run(bootstrap_admin_token(settings))
    asyncio.run(check_stored_secrets(settings))
    if token is not None:
        log.warning("admin token: %s", token, extra={"admin_token": token})
    try:
        app = create_app(settings, worker=worker)
    except TracingUnavailable as exc:
        log.error("%s", exc)
        return 2
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
    freeze_startup_objects()
    if worker:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    server = uvicorn.Server(config)
    # uvicorn re-raises SIGTERM after its graceful shutdown; by then the work is
    # done, so that second delivery only has to end the process with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return 0 if server.started else 1


# Allocations minus deallocations of tracked objects between two young
# collections (CPython's default is 700). Under delivery load the deallocations
# of older objects cancel most allocations, so at 700 each young collection
# found some 20,000 live objects of in-flight work and held the event loop
# for about 5 ms, a few times a second (BENCHMARKS.md, "The collector's young
# generation").
YOUNG_COLLECTION_THRESHOLD = 10_000


# How long a thread that wants the interpreter waits before the one holding it
# must give it up (CPython's default is 5 ms). With the embedded worker on a
# thread of its own (app.worker.thread), each step of a request that finds the
# busy worker holding the interpreter waited up to 5 ms for it, a few steps a
# request (BENCHMARKS.md, "Fairness between tenants").
SWITCH_INTERVAL_SECONDS = 0.0005


def freeze_startup_objects() -> None:
    # Everything imported and built so far lives as long as the process: keep
    # it out of the collector's way, or each full collection stalls the loop.
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _worker(settings: Settings) -> int:
    import uvloop

    try:
        uvloop.run(run_worker(settings, before_start=freeze_startup_objects))
    except TracingUnavailable as exc:
        log.error("%s", exc)
        return 2
    return 0
