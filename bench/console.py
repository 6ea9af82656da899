"""Console page latency with a big history: 1,000,000 events and 100,000 dead letters.

    flock -x /tmp/er-quiet.lock .venv/bin/python bench/console.py \
        [--backend sqlite|postgres] [--events 1000000] [--dead 100000] [--requests 40]
        [--keep URL [--fill-only]]

Fills a migrated database by SQL: one subscription, ``--events`` events
received over the last 7 days (the newest in the last minutes, for the
overview), one delivery each — every ``events / dead``-th dead, the others
succeeded — and one attempt per delivery. Then starts ``eventrelay serve`` on
it, signs in to the console, and requests each page ``--requests`` times in a
row after one warm-up, reporting p50, p95 and the slowest, in milliseconds.
The baseline measured in the same run is ``/healthz`` (the server's floor).

Without ``--keep`` the database is a fresh one, dropped at the end. With
``--keep URL`` (``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://…/name``)
it is that database, created and filled only if it holds no events yet, and
kept: fill once with ``--fill-only``, then measure in separate runs (each
moves the newest events into the last five minutes, for the overview). On
PostgreSQL the fill ends with ``VACUUM (ANALYZE)``, as the retention job's pass
leaves the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from common import ROOT, run_on_fresh_database, start_server

sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from app.store.migrations import upgrade_head  # noqa: E402

TOKEN = "er_bench_console_token_0123456789"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

_SUBSCRIPTION = """
    INSERT INTO subscriptions (id, url, event_types, secret, headers, ordering, on_dead_letter,
                               max_in_flight, status, consecutive_failures, created_at, updated_at)
    VALUES ('sub_bench', 'http://127.0.0.1:9/', '["*"]', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
            '{}', 'none', 'skip', 32, 'active', 3, {now}, {now})
"""
_POSTGRES = [
    """
    INSERT INTO events (id, type, key, data, received_at)
    SELECT 'evt_' || lpad(g::text, 26, '0'), 'order.' || (g % 5), 'k' || (g % 1000),
           '{"order": ' || g || ', "pad": "' || repeat('x', 100) || '"}',
           now() - (:events - g) * (interval '7 days' / :events)
    FROM generate_series(1, :events) AS g
    """,
    """
    INSERT INTO deliveries (id, event_id, subscription_id, event_type, status, ready, attempts,
                            next_attempt_at, created_at, completed_at, dead_lettered_at,
                            last_status_code, last_error)
    SELECT 'dlv_' || lpad(g::text, 26, '0'), 'evt_' || lpad(g::text, 26, '0'), 'sub_bench',
           'order.' || (g % 5), CASE WHEN g % :every = 0 THEN 'dead' ELSE 'succeeded' END,
           TRUE, 1, now(), now(), CASE WHEN g % :every <> 0 THEN now() END,
           CASE WHEN g % :every = 0 THEN now() END,
           CASE WHEN g % :every = 0 THEN 500 ELSE 200 END,
           CASE WHEN g % :every = 0 THEN 'gave up after 1 attempts; last: HTTP 500' END
    FROM generate_series(1, :events) AS g
    """,
    """
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                          response_body, request_headers)
    SELECT 'dlv_' || lpad(g::text, 26, '0'), 1, now(), 5,
           CASE WHEN g % :every = 0 THEN 500 ELSE 200 END, 'ok', '{"webhook-id": "x"}'
    FROM generate_series(1, :events) AS g
    """,
]
_SQLITE_SERIES = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :events)"
_SQLITE = [
    _SQLITE_SERIES
    + """
    INSERT INTO events (id, type, key, data, received_at)
    SELECT 'evt_' || printf('%026d', n), 'order.' || (n % 5), 'k' || (n % 1000),
           '{"order": ' || n || ', "pad": "' || printf('%.100c', 'x') || '"}',
           datetime('now', printf('-%f seconds', (:events - n) * 604800.0 / :events))
    FROM g
    """,
    _SQLITE_SERIES
    + """
    INSERT INTO deliveries (id, event_id, subscription_id, event_type, status, ready, attempts,
                            next_attempt_at, created_at, completed_at, dead_lettered_at,
                            last_status_code, last_error)
    SELECT 'dlv_' || printf('%026d', n), 'evt_' || printf('%026d', n), 'sub_bench',
           'order.' || (n % 5), CASE WHEN n % :every = 0 THEN 'dead' ELSE 'succeeded' END,
           1, 1, datetime('now'), datetime('now'),
           CASE WHEN n % :every <> 0 THEN datetime('now') END,
           CASE WHEN n % :every = 0 THEN datetime('now') END,
           CASE WHEN n % :every = 0 THEN 500 ELSE 200 END,
           CASE WHEN n % :every = 0 THEN 'gave up after 1 attempts; last: HTTP 500' END
    FROM g
    """,
    _SQLITE_SERIES
    + """
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                          response_body, request_headers)
    SELECT 'dlv_' || printf('%026d', n), 1, datetime('now'), 5,
           CASE WHEN n % :every = 0 THEN 500 ELSE 200 END, 'ok', '{"webhook-id": "x"}'
    FROM g
    """,
]


async def fill(url: str, events: int, dead: int) -> None:
    engine = create_async_engine(url)
    sqlite = url.startswith("sqlite")
    now = "datetime('now')" if sqlite else "now()"
    params = {"events": events, "every": max(1, events // dead)}
    try:
        async with engine.begin() as conn:
            await conn.execute(text(_SUBSCRIPTION.replace("{now}", now)))
            for statement in _SQLITE if sqlite else _POSTGRES:
                await conn.execute(text(statement), params)
        if not sqlite:
            async with engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.execute(text("VACUUM (ANALYZE)"))
    finally:
        await engine.dispose()


# A kept database ages between runs: its newest 500 events are moved back into
# the last five minutes, so that the overview's minutes have events to count.
_RECENT = {
    "sqlite": """
    UPDATE events SET received_at =
        datetime('now', printf('-%f seconds', ((SELECT max(seq) FROM events) - seq) * 0.6))
    WHERE seq > (SELECT max(seq) FROM events) - 500
    """,
    "postgresql": """
    UPDATE events SET received_at =
        now() - ((SELECT max(seq) FROM events) - seq) * interval '0.6 seconds'
    WHERE seq > (SELECT max(seq) FROM events) - 500
    """,
}


async def refresh_recent(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(_RECENT[conn.dialect.name]))
    finally:
        await engine.dispose()


async def filled(url: str) -> bool:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT 1 FROM events LIMIT 1"))).first() is not None
    finally:
        await engine.dispose()


def timed(client: httpx.Client, path: str, requests: int) -> list[float]:
    client.get(path)  # warm-up
    took = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(path)
        took.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return took


def pages(events: int) -> list[str]:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    middle = f"evt_{events // 2:026d}"
    return [
        "/healthz",
        "/console/",
        "/console/events",
        "/console/events?type=order.3",
        "/console/events?key=k42",
        f"/console/events?since={since}",
        "/console/events?status=dead",
        f"/console/events/{middle}",
        "/console/subscriptions",
        "/console/subscriptions/sub_bench",
        "/console/dlq",
        "/console/dlq?subscription_id=sub_bench",
        "/console/dlq?event_type=order.0",
        "/console/tokens",
        "/console/event-types",
    ]


async def prepare(url: str, args: argparse.Namespace) -> None:
    """Migrate ``url`` and fill it, unless a kept database is filled already."""
    await asyncio.to_thread(upgrade_head, url)
    if await filled(url):
        print("the database is filled already; its newest events moved to the last minutes")
        await refresh_recent(url)
        return
    started = time.perf_counter()
    await fill(url, args.events, args.dead)
    print(
        f"filled {args.events:,} events, {args.dead:,} dead letters "
        f"in {time.perf_counter() - started:.0f} s"
    )


def measure(url: str, workdir: Path, args: argparse.Namespace) -> None:
    # Retention off in effect: a kept database's oldest events stay.
    settings = {"EVENTRELAY_LOG_FORMAT": "json", "EVENTRELAY_RETENTION_DAYS": "3650"}
    proc, base = start_server(url, workdir, TOKEN, settings)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            signed = client.post("/console/sign-in", data={"token": TOKEN})
            assert signed.status_code == 303, signed.text
            print(f"{'page':<48} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
            for path in pages(args.events):
                took = timed(client, path, args.requests)
                p95 = statistics.quantiles(took, n=20)[-1]
                print(f"{path:<48} {statistics.median(took):8.1f} {p95:8.1f} {max(took):8.1f}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def run(url: str, _: Path | None, workdir: Path, args: argparse.Namespace) -> int:
    await prepare(url, args)
    await asyncio.to_thread(measure, url, workdir, args)
    return 0


async def create_kept(url: str) -> None:
    """A kept PostgreSQL database is created when it does not exist yet."""
    if url.startswith("sqlite"):
        return
    server, name = url.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def run_kept(args: argparse.Namespace) -> int:
    asyncio.run(create_kept(args.keep))
    asyncio.run(prepare(args.keep, args))
    if not args.fill_only:
        workdir = Path(tempfile.mkdtemp(prefix="eventrelay-console-"))
        try:
            measure(args.keep, workdir, args)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--keep", metavar="URL", help="fill (once) and keep this database")
    parser.add_argument("--fill-only", action="store_true", help="with --keep: do not measure")
    args = parser.parse_args()
    if args.keep:
        return run_kept(args)
    if args.fill_only:
        parser.error("--fill-only needs --keep")
    return run_on_fresh_database(
        args.backend, PG_DSN, "console", lambda u, p, w: run(u, p, w, args)
    )


if __name__ == "__main__":
    raise SystemExit(main())
