"""One retention pass over a million expired rows: how long, what it blocks, what it leaves.

    .venv/bin/python bench/retention_scale.py [--rows 1000000]

Fills a fresh, migrated PostgreSQL database by SQL with ``--rows`` expired events, each
with one succeeded delivery, one attempt and one idempotency key (all older
than the retention window), plus 1,000 dead letters whose events must stay.
Then runs the retention job's pass (``prune`` and ``refresh_statistics``, as
``eventrelay worker`` does) while a probe ingests one event every 10 ms
through the store, and reports:

* the pass's time, split into the deletes and the statistics/``VACUUM``;
* the probe's ingest latency (p50, p99, max) during the pass against the same
  probe before it: what the pass blocks;
* table and index sizes before the fill, after it and after the pass, and the
  rows left (the dead letters and their events stay). A plain ``VACUUM`` keeps
  the files' size but makes the space reusable: the next inserts fill it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from common import ROOT, pg_execute

sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from app.domain.events import NewEvent  # noqa: E402
from app.domain.ids import new_id  # noqa: E402
from app.store.database import Database, open_database  # noqa: E402
from app.store.ingest import ingest  # noqa: E402
from app.store.migrations import upgrade_head  # noqa: E402
from app.store.retention import prune, refresh_statistics  # noqa: E402

TABLES = ("events", "deliveries", "attempts", "idempotency_keys")
FILL_SLICE = 100_000

_FILL_POSTGRES = [
    """
    INSERT INTO subscriptions (id, url, event_types, secret, headers, ordering, on_dead_letter,
                               max_in_flight, status, created_at, updated_at)
    VALUES ('sub_scale', 'http://127.0.0.1:9/', '["*"]', 'whsec_x', '{}', 'none', 'skip', 32,
            'active', now(), now())
    """,
    """
    INSERT INTO events (id, type, key, data, received_at)
    SELECT 'evt_' || lpad(g::text, 26, '0'), 'order.created', 'k' || (g % 1000),
           '{"order": "' || g || '", "pad": "' || repeat('x', 200) || '"}',
           now() - interval '30 days' + g * interval '1 ms'
    FROM generate_series(CAST(:lo AS INTEGER), CAST(:hi AS INTEGER)) AS g
    """,
    """
    INSERT INTO deliveries (id, event_id, subscription_id, event_type, status, ready, attempts,
                            next_attempt_at, created_at, completed_at, dead_lettered_at)
    SELECT 'dlv_' || lpad(g::text, 26, '0'), 'evt_' || lpad(g::text, 26, '0'), 'sub_scale',
           'order.created', CASE WHEN g % (:rows / 1000) = 0 THEN 'dead' ELSE 'succeeded' END,
           TRUE, 1, now() - interval '30 days', now() - interval '30 days' + g * interval '1 ms',
           CASE WHEN g % (:rows / 1000) <> 0 THEN now() - interval '29 days' END,
           CASE WHEN g % (:rows / 1000) = 0 THEN now() - interval '29 days' END
    FROM generate_series(CAST(:lo AS INTEGER), CAST(:hi AS INTEGER)) AS g
    """,
    """
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                          response_body)
    SELECT 'dlv_' || lpad(g::text, 26, '0'), 1, now() - interval '29 days', 5, 200, 'ok'
    FROM generate_series(CAST(:lo AS INTEGER), CAST(:hi AS INTEGER)) AS g
    """,
    """
    INSERT INTO idempotency_keys (key, fingerprint, event_id, response_status, response_body,
                                  created_at)
    SELECT 'key-' || g, repeat('f', 64), 'evt_' || lpad(g::text, 26, '0'), 202,
           '{"id": "evt_' || lpad(g::text, 26, '0') || '"}',
           now() - interval '30 days' + g * interval '1 ms'
    FROM generate_series(CAST(:lo AS INTEGER), CAST(:hi AS INTEGER)) AS g
    """,
]


async def sizes(db: Database) -> dict[str, tuple[int, int]]:
    """Per table: (rows, bytes with indexes)."""
    found = {}
    async with db.read() as conn:
        for table in TABLES:
            rows = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            size = (
                await conn.execute(text(f"SELECT pg_total_relation_size('{table}')"))
            ).scalar_one()
            found[table] = (int(rows), int(size or 0))
    return found


async def probe(db: Database, stop: asyncio.Event, latencies: list[float]) -> None:
    """Ingest one event every 10 ms (a unique key each), recording each commit's latency."""
    n = 0
    while not stop.is_set():
        now = datetime.now(UTC)
        n += 1
        event = NewEvent(
            id=new_id("evt"),
            type="probe",
            key=f"p{n % 10}",
            data_json="{}",
            schema_version=None,
            occurred_at=None,
            received_at=now,
            idempotency_key=f"probe-{secrets.token_hex(8)}",
            fingerprint="f",
        )
        t0 = time.perf_counter()
        await ingest(db, [[event]], ttl=timedelta(days=1), now=now)
        latencies.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.01)


def _latency(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"


async def measure(db: Database, rows: int) -> None:
    empty = await sizes(db)
    t0 = time.monotonic()
    # In slices: one statement of a million rows outlasts the driver's command timeout.
    async with db.write() as conn:
        await conn.execute(text(_FILL_POSTGRES[0]))
    for statement in _FILL_POSTGRES[1:]:
        for lo in range(1, rows + 1, FILL_SLICE):
            async with db.write() as conn:
                hi = min(lo + FILL_SLICE - 1, rows)
                await conn.execute(text(statement), {"rows": rows, "lo": lo, "hi": hi})
    await refresh_statistics(db)
    print(
        f"filled {rows:,} expired rows per table in {time.monotonic() - t0:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    filled = await sizes(db)

    stop, idle = asyncio.Event(), []
    task = asyncio.create_task(probe(db, stop, idle))
    await asyncio.sleep(10)
    stop.set()
    await task

    stop, during = asyncio.Event(), []
    task = asyncio.create_task(probe(db, stop, during))
    now = datetime.now(UTC)
    t0 = time.monotonic()
    pruned = await prune(db, cutoff=now - timedelta(days=7), keys_cutoff=now - timedelta(days=1))
    deleted = time.monotonic() - t0
    await refresh_statistics(db)
    total = time.monotonic() - t0
    stop.set()
    await task
    after = await sizes(db)

    print(f"## Retention pass over {rows:,} expired rows ({db.dialect})\n")
    print(f"- pruned: {pruned}")
    print(f"- pass: {total:.1f} s ({deleted:.1f} s deleting, {total - deleted:.1f} s statistics)")
    print(f"- probe ingest before the pass: {_latency(idle)}")
    print(f"- probe ingest during the pass: {_latency(during)} ({len(during)} commits)\n")
    print("| table | rows filled | rows after | MB empty | MB filled | MB after pass |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for table in TABLES:
        print(
            f"| {table} | {filled[table][0]:,} | {after[table][0]:,} | "
            f"{empty[table][1] / 1e6:.1f} | {filled[table][1] / 1e6:.1f} | "
            f"{after[table][1] / 1e6:.1f} |"
        )


async def run(url: str, rows: int) -> None:
    await asyncio.to_thread(upgrade_head, url)
    db = open_database(url)
    try:
        await measure(db, rows)
    finally:
        await db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"er_retention_scale_{secrets.token_hex(4)}"
    asyncio.run(pg_execute(args.pg_dsn, f'CREATE DATABASE "{name}"'))
    try:
        url = args.pg_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        asyncio.run(run(f"{url}/{name}", args.rows))
    finally:
        asyncio.run(pg_execute(args.pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
