"""``eventrelay`` with experimental patches applied at run time, to price a
proposed change to ``app/`` before anyone makes it.

    .venv/bin/python bench/patched_serve.py --patches async-services,auth-single-flight \\
        serve --no-worker --host 127.0.0.1 --port 8000

``bench/ingest.py --variant NAME=patch,patch`` starts one of these beside the
real server and interleaves it with the others, so every patch is measured as
an eventrelay/bare ratio in the same run. Nothing here is product code: each
patch is the smallest monkeypatch that has the effect of the proposed change.

Patches:

``async-services``
    ``app/api/state.py: services`` is a plain ``def`` used as a FastAPI
    dependency, so FastAPI runs it in the AnyIO thread pool: one thread hop
    per request. The patch makes the dependency ``async def`` (a no-op since
    fcee3f5, which made that change in main).
``auth-single-flight``
    ``app/services/auth.py: Authenticator._lookup`` caches a token for 1 s;
    when the entry expires every request in flight misses at once and each
    runs its own ``SELECT`` (a stampede on a 4-connection reader pool). The
    patch lets one lookup per token run and the others await it (main has
    done the same since fcee3f5).
``fast-ingest-route``
    Serves ``POST /v1/events`` through a plain Starlette route placed before
    the FastAPI routes (same auth, parsing, service call and answer), skipping
    FastAPI's per-request dependency solving. The FastAPI route stays for the
    OpenAPI document.
``lean-fastapi-route``
    Like ``fast-ingest-route`` but still a FastAPI route: the endpoint takes
    only the ``Request`` (as ``bench/bare_app.py`` does) and authenticates and
    reads ``Idempotency-Key`` itself, so FastAPI has no dependencies, no
    header parameters and no thread-pool call to resolve. This is the change
    proposed for ``app/api/events.py`` (the header and the security scheme
    then go into ``openapi_extra``).
``no-instrumentator``
    Drops prometheus-fastapi-instrumentator's middleware (to price it only;
    the API requires its metrics).
``sqlite-one-hop``
    Runs the whole group-commit transaction on SQLite (BEGIN IMMEDIATE ...
    COMMIT, the same statements from ``app/store/ingest.py``) in one call to
    a dedicated writer thread with a synchronous SQLAlchemy engine (pysqlite,
    same pragmas), instead of one aiosqlite round trip per cursor, execute,
    fetch and close (about 25 per flush). The event loop hands over the batch
    once and gets the answers once.
``batch-busy-lines``
    ``app/store/lines.py: busy_lines`` runs one ``SELECT`` per (subscription,
    ordering key) line of the flush: with N subscriptions and a batch of 32
    events, 32·N statements per group commit. The patch asks once per flush
    (``subscription_id IN (...) AND ordering_key IN (...)``, the same partial
    index predicate) and keeps the requested pairs.
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
    Times every call aiosqlite hands to its thread, by statement kind: the
    time inside SQLite (``*_in_thread_ms``) and until the awaiting coroutine
    has the answer (``*_total_ms``). Use together with ``count``.
``count``
    Counts token lookups in the database and thread-pool hops, and writes
    them as JSON to ``$BENCH_COUNTS_FILE`` when the server exits.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import hmac
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COUNTS: Counter[str] = Counter()
TIMINGS: dict[str, list[float]] = {"flush_ms": [], "loop_delay_ms": []}


def patch_async_services() -> None:
    import inspect

    import app.api.state as state

    sync_services = state.services
    if inspect.iscoroutinefunction(sync_services):
        return  # main has had it since fcee3f5

    async def services(request: Request) -> Any:
        return request.app.state.services

    # deps.py builds ServicesDep from state.services when it is first imported.
    setattr(state, "services", services)  # noqa: B010
    import app.api.deps as deps

    setattr(deps, "services", sync_services)  # noqa: B010  (older _authorize calls it directly)


def patch_auth_single_flight() -> None:
    from app.domain.tokens import Scope
    from app.services import auth
    from app.store import tokens as store
    from app.store.tokens import TokenRecord

    pending: dict[str, asyncio.Future[Any]] = {}

    async def _lookup(self: Any, digest: str) -> Any:
        if self._bootstrap_hash is not None and hmac.compare_digest(digest, self._bootstrap_hash):
            return TokenRecord(auth.BOOTSTRAP_ID, Scope.ADMIN)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        future = pending.get(digest)
        if future is None:
            future = asyncio.ensure_future(store.find_token(self._db, digest))
            pending[digest] = future
            try:
                record = await future
            finally:
                pending.pop(digest, None)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + auth.CACHE_SECONDS, record)
            return record
        return await asyncio.shield(future)

    auth.Authenticator._lookup = _lookup  # type: ignore[method-assign]


def _ingest_endpoint() -> Callable[[Request], Awaitable[Any]]:
    """``POST /v1/events`` without FastAPI dependencies: auth, key, body, service call."""
    from app.api.body import read_json
    from app.api.events import _accepted
    from app.domain.idempotency import parse_key
    from app.domain.tokens import Scope

    async def post_event(request: Request) -> Any:
        svc = request.app.state.services
        await svc.auth.authenticate(request.headers.get("authorization"), Scope.INGEST)
        raw_key = request.headers.get("idempotency-key")
        key = parse_key(raw_key) if raw_key is not None else None
        document = await read_json(request, svc.settings.max_payload_bytes)
        return _accepted(await svc.ingest.ingest_one(document, key))

    return post_event


def _wrap_create_app(extend: Callable[[Any], None]) -> None:
    """Run ``extend(app)`` on every app ``create_app`` builds, wherever it is imported."""
    import app.api.app as api_app
    import app.cli  # noqa: F401  (loads whichever module of the CLI imports create_app)

    original = api_app.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        built = original(*args, **kwargs)
        extend(built)
        return built

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("app.") and (
            getattr(module, "create_app", None) is original
        ):
            setattr(module, "create_app", create_app)  # noqa: B010


def patch_fast_ingest_route() -> None:
    from starlette.routing import Route

    endpoint = _ingest_endpoint()

    def extend(built: Any) -> None:
        built.router.routes.insert(0, Route("/v1/events", endpoint, methods=["POST"]))

    _wrap_create_app(extend)


def patch_lean_fastapi_route() -> None:
    endpoint = _ingest_endpoint()

    async def post_event(request: Request) -> Any:
        return await endpoint(request)

    def extend(built: Any) -> None:
        built.add_api_route(
            "/v1/events", post_event, methods=["POST"], status_code=202, include_in_schema=False
        )
        built.router.routes.insert(0, built.router.routes.pop())

    _wrap_create_app(extend)


def patch_no_instrumentator() -> None:
    from prometheus_fastapi_instrumentator import Instrumentator

    def instrument(self: Instrumentator, app: Any, **_: Any) -> Instrumentator:
        return self

    Instrumentator.instrument = instrument  # type: ignore[method-assign,assignment]


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
        name = getattr(fn, "__name__", "call")
        if args and isinstance(args[0], str):
            name += ":" + args[0].split(None, 1)[0].upper()
        return name

    def wrap(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            label = kind(fn, args)
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


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


class _SyncConnection:
    """``await conn.execute(...)`` on a synchronous connection: returns at once."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn.execute(*args, **kwargs)


def _sync_sqlite_writer(url: str) -> Any:
    from sqlalchemy import create_engine, event

    from app.store import database

    engine = create_engine(url.replace("+aiosqlite", ""), pool_size=1, max_overflow=0)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={database.SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def patch_sqlite_one_hop() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from app.store import ingest as store

    original = store.ingest
    writers: dict[str, tuple[Any, ThreadPoolExecutor]] = {}
    lock = threading.Lock()

    def flush(engine: Any, db: Any, units: Any, cutoff: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return flush_once(engine, db, units, cutoff)
        finally:
            TIMINGS.setdefault("flush_in_thread_ms", []).append(1000 * (time.perf_counter() - wall))
            TIMINGS.setdefault("flush_thread_cpu_ms", []).append(1000 * (time.thread_time() - cpu))

    def flush_once(engine: Any, db: Any, units: Any, cutoff: Any) -> Any:
        # Runs in the writer thread: the coroutine never really suspends.
        for attempt in range(store.MAX_RETRIES):
            try:
                with engine.begin() as conn:
                    shim: Any = _SyncConnection(conn)
                    coro = store._ingest(shim, db.dialect, units, cutoff)
                    try:
                        coro.send(None)
                    except StopIteration as done:
                        return done.value
                    raise RuntimeError("the ingest transaction awaited something real")
            except store.KeyRace:
                if attempt == store.MAX_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def ingest(db: Any, units: Any, *, ttl: Any, now: Any) -> Any:
        if not db.is_sqlite:
            return await original(db, units, ttl=ttl, now=now)
        with lock:
            if db.url not in writers:
                writers[db.url] = (
                    _sync_sqlite_writer(db.url),
                    ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer"),
                )
        engine, executor = writers[db.url]
        loop = asyncio.get_running_loop()
        from app.store.database import translate_errors

        with translate_errors():
            return await loop.run_in_executor(executor, flush, engine, db, units, now - ttl)

    store.ingest = ingest


def patch_batch_busy_lines() -> None:
    from sqlalchemy import bindparam, text

    from app.store import lines

    busy = text(
        """
        SELECT DISTINCT d.subscription_id, d.ordering_key
        FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
        WHERE d.status IN ('pending', 'in_flight', 'dead')
          AND (d.status <> 'dead' OR s.on_dead_letter = 'block')
          AND d.subscription_id IN :subs AND d.ordering_key IN :keys
        """
    ).bindparams(bindparam("subs", expanding=True), bindparam("keys", expanding=True))

    async def busy_lines(conn: Any, wanted: Any) -> set[tuple[str, str]]:
        pairs = {(str(sub), str(key)) for sub, key in wanted}
        if not pairs:
            return set()
        subs = sorted({sub for sub, _ in pairs})
        keys = sorted({key for _, key in pairs})
        rows = await conn.execute(busy, {"subs": subs, "keys": keys})
        return {(r[0], r[1]) for r in rows} & pairs

    setattr(lines, "busy_lines", busy_lines)  # noqa: B010


def patch_switch_interval() -> None:
    sys.setswitchinterval(0.0005)


PATCHES: dict[str, Callable[[], None]] = {
    "async-services": patch_async_services,
    "auth-single-flight": patch_auth_single_flight,
    "fast-ingest-route": patch_fast_ingest_route,
    "lean-fastapi-route": patch_lean_fastapi_route,
    "no-instrumentator": patch_no_instrumentator,
    "switch-interval": patch_switch_interval,
    "batch-busy-lines": patch_batch_busy_lines,
    "sqlite-one-hop": patch_sqlite_one_hop,
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
    # async-services must run before anything imports app.api.deps.
    for name in sorted(names, key=lambda n: n != "async-services"):
        PATCHES[name]()
    from app.cli import main as eventrelay

    return eventrelay(rest)


if __name__ == "__main__":
    sys.exit(main())
