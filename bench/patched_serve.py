"""``eventrelay`` with experimental patches applied at run time, to price a
proposed change to ``app/`` before anyone makes it.

    .venv/bin/python bench/patched_serve.py --patches no-observability \\
        serve --no-worker --host 127.0.0.1 --port 8000

``bench/ingest.py --variant NAME=patch,patch`` starts one of these beside the
real server and interleaves it with the others, so every patch is measured as
an eventrelay/bare ratio in the same run. Nothing here is product code: each
patch is the smallest monkeypatch that has the effect of the proposed change.

Patches:

``nothing``
    No change: the same server through this launcher, to calibrate the others.
``no-observability``
    Metrics and logging off, to price them (issue: at most 5 % of ingest):
    ``no-request-telemetry``, ``no-prometheus`` and ``no-logging``.
``no-http-metrics``
    Requests are not recorded in the HTTP metrics (the middleware still runs).
``no-request-telemetry``
    The middleware for request IDs and HTTP metrics passes requests straight through.
``no-prometheus``
    Every prometheus_client counter, gauge, histogram and summary update is a no-op.
``no-logging``
    ``logging.disable(logging.CRITICAL)``.
``switch-interval``
    ``sys.setswitchinterval(0.0005)`` (default 5 ms): how long a thread that
    wants the GIL waits for a busy one. On SQLite every statement of the
    group-commit transaction runs in aiosqlite's thread and needs the GIL
    while the event loop thread is busy with HTTP work; this prices that wait.
``flush-timing``
    Records the wall time of every group-commit flush (``app.store.ingest.ingest``)
    and the event loop's scheduling delay (a callback every 10 ms), and adds
    their percentiles to the ``count`` output (use together with ``count``).
``sqlite-timing``
    Times every call handed to a SQLite thread: the writer's transactions
    (the ingest flush, the worker's cycle; ``transaction_*``) and aiosqlite's
    calls by statement kind (the other writes and the reads): the time inside
    SQLite (``*_in_thread_ms``) and until the awaiting coroutine has the
    answer (``*_total_ms``). Use together with ``count``.
``count``
    Counts token lookups in the database and thread-pool hops, and writes
    them as JSON to ``$BENCH_COUNTS_FILE`` when the server exits.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COUNTS: Counter[str] = Counter()
TIMINGS: dict[str, list[float]] = {"flush_ms": [], "loop_delay_ms": []}


def _counted(name: str, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        COUNTS[name] += 1
        return await func(*args, **kwargs)

    return wrapper


def patch_count() -> None:
    import fastapi.dependencies.utils as fastapi_deps
    import starlette.concurrency

    from app.services import auth
    from app.store import tokens

    auth.store.find_token = _counted("token_lookups", tokens.find_token)  # type: ignore[attr-defined]
    fastapi_deps.run_in_threadpool = _counted(  # type: ignore[attr-defined,assignment]
        "threadpool_hops", starlette.concurrency.run_in_threadpool
    )
    import uvicorn

    started = time.monotonic()

    def dump() -> None:
        path = os.environ.get("BENCH_COUNTS_FILE")
        if path:
            seconds = time.monotonic() - started
            timings = {k: _percentiles(v) for k, v in TIMINGS.items() if v}
            Path(path).write_text(json.dumps(dict(COUNTS) | timings | {"seconds": seconds}))

    # uvicorn re-raises SIGTERM after a graceful shutdown, so atexit never
    # runs under `serve`: write the counts when the server loop ends instead.
    serve = uvicorn.Server._serve

    async def counted_serve(self: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        try:
            await serve(self, *args, **kwargs)
        finally:
            dump()

    uvicorn.Server._serve = counted_serve  # type: ignore[method-assign]
    atexit.register(dump)


def patch_flush_timing() -> None:
    from app.store import ingest as store

    original = store.ingest
    sampler: list[asyncio.Task[None]] = []

    async def sample_loop() -> None:
        while True:
            await asyncio.sleep(0.01)
            asked = time.perf_counter()
            await asyncio.sleep(0)  # back of the ready queue: one turn of the loop
            TIMINGS["loop_delay_ms"].append(1000 * (time.perf_counter() - asked))

    async def timed_ingest(*args: Any, **kwargs: Any) -> Any:
        if not sampler:  # started with the first flush, inside the server's loop
            sampler.append(asyncio.get_running_loop().create_task(sample_loop()))
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            TIMINGS["flush_ms"].append(1000 * (time.perf_counter() - started))

    store.ingest = timed_ingest


def patch_sqlite_timing() -> None:
    import aiosqlite.core

    def kind(fn: Any, args: tuple[Any, ...]) -> str:
        name = getattr(fn, "__name__", getattr(getattr(fn, "func", None), "__name__", "call"))
        if args and isinstance(args[0], str):
            name += ":" + args[0].split(None, 1)[0].upper()
        return name

    def wrap(
        original: Callable[..., Awaitable[Any]], prefix: str = ""
    ) -> Callable[..., Awaitable[Any]]:
        async def timed(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            label = prefix + kind(fn, args)
            inside: list[float] = []

            def run(*a: Any, **k: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    inside.append(time.perf_counter() - started)

            started = time.perf_counter()
            try:
                return await original(self, run, *args, **kwargs)
            finally:
                total = 1000 * (time.perf_counter() - started)
                TIMINGS.setdefault(f"{label}_total_ms", []).append(total)
                if inside:
                    TIMINGS.setdefault(f"{label}_in_thread_ms", []).append(1000 * inside[0])

        return timed

    # Cursors go through their connection's _execute too.
    connection: Any = aiosqlite.core.Connection
    connection._execute = wrap(connection._execute)

    from app.store.sqlite_writer import SqliteWriter

    writer: Any = SqliteWriter
    writer.transaction = wrap(writer.transaction, "transaction:")


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


async def _passthrough(self: Any, scope: Any, receive: Any, send: Any) -> None:
    await self.app(scope, receive, send)


def patch_no_http_metrics() -> None:
    from app.api.http_metrics import HttpMetrics

    def record(self: HttpMetrics, *args: Any) -> None:
        return None

    HttpMetrics.record = record  # type: ignore[method-assign,assignment]


def patch_no_request_telemetry() -> None:
    from app.api.middleware import RequestTelemetry

    RequestTelemetry.__call__ = _passthrough  # type: ignore[method-assign]


def patch_no_prometheus() -> None:
    from prometheus_client import Counter, Gauge, Histogram, Summary
    from prometheus_client.metrics import MetricWrapperBase

    def nothing(self: MetricWrapperBase, *args: Any, **kwargs: Any) -> None:
        return None

    Counter.inc = nothing  # type: ignore[method-assign]
    Gauge.inc = Gauge.dec = nothing  # type: ignore[method-assign]
    Histogram.observe = nothing  # type: ignore[method-assign]
    Summary.observe = nothing  # type: ignore[method-assign]


def patch_no_logging() -> None:
    import logging

    logging.disable(logging.CRITICAL)


def patch_no_observability() -> None:
    patch_no_request_telemetry()
    patch_no_prometheus()
    patch_no_logging()


def patch_nothing() -> None:
    return None


def patch_switch_interval() -> None:
    sys.setswitchinterval(0.0005)


PATCHES: dict[str, Callable[[], None]] = {
    "nothing": patch_nothing,
    "no-observability": patch_no_observability,
    "no-http-metrics": patch_no_http_metrics,
    "no-request-telemetry": patch_no_request_telemetry,
    "no-prometheus": patch_no_prometheus,
    "no-logging": patch_no_logging,
    "switch-interval": patch_switch_interval,
    "flush-timing": patch_flush_timing,
    "sqlite-timing": patch_sqlite_timing,
    "count": patch_count,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patches", default="", help=f"comma-separated: {', '.join(PATCHES)}")
    args, rest = parser.parse_known_args()
    names = [n for n in args.patches.split(",") if n]
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        parser.error(f"unknown patches: {', '.join(unknown)}")
    for name in names:
        PATCHES[name]()
    from app.cli import main as eventrelay

    return eventrelay(rest)


if __name__ == "__main__":
    sys.exit(main())
