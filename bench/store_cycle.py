"""The worker's database cycle alone, without HTTP: PostgreSQL's CPU per delivery.

    .venv/bin/python bench/store_cycle.py --dsn postgresql://postgres@127.0.0.1:5432/test
        [--deliveries 20000] [--ordering none|key] [--batch 200] [--baseline-tree DIR]

Creates a database, migrates it (with this tree's code, or ``DIR``'s), fills it
with one subscription and ``--deliveries`` pending deliveries (100 keys with
``--ordering key``), then drives :func:`app.store.deliveries.complete_and_claim`
as the worker does: each cycle writes the outcomes (succeeded) of the previous
cycle's claim and claims up to ``--batch`` more, until nothing is left. It
reports the cycles, the wall time and the CPU the cycle's PostgreSQL backend
spent per delivery (from ``/proc``; PostgreSQL on this machine), and the
client's CPU per delivery. The database is dropped at the end.

With ``--baseline-tree`` the same drain runs in a subprocess with ``DIR`` on
``PYTHONPATH`` first, then with this tree, alternating ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def fill(dsn: str, deliveries: int, ordering: str, extra: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    now = datetime.now(UTC) - timedelta(minutes=1)
    keyed = ordering == "key"
    await conn.execute(
        """INSERT INTO subscriptions (id, url, event_types, secret, headers, ordering,
               on_dead_letter, max_in_flight, status, created_at, updated_at, tenant_id)
           VALUES ('sub_bench', 'http://127.0.0.1:9/', '["*"]', 'whsec_x', '{}', $1,
                   'retry', 64, 'active', $2, $2, 'default')""",
        ordering,
        now,
    )
    await conn.execute(
        """INSERT INTO events (id, type, key, data, received_at, tenant_id)
           SELECT 'evt_' || g, 'bench.event', 'k' || (g % 100), repeat('x', 300), $1, 'default'
           FROM generate_series(1, $2) g""",
        now,
        deliveries,
    )
    await conn.execute(
        """INSERT INTO deliveries (id, event_id, subscription_id, event_type, ordering_key,
               status, ready, attempts, round_attempts, next_attempt_at, created_at, tenant_id)
           SELECT 'dlv_' || g, 'evt_' || g, 'sub_bench', 'bench.event',
                  CASE WHEN $3 THEN 'k' || (g % 100) END, 'pending',
                  NOT $3 OR g <= 100, 0, 0, $1, $1, 'default'
           FROM generate_series(1, $2) g ORDER BY g""",
        now,
        deliveries,
        keyed,
    )
    for statement in extra:
        await conn.execute(statement)
    await conn.execute("VACUUM (ANALYZE) deliveries, attempts, events, subscriptions, tenants")
    await conn.close()


async def drain(url: str, batch: int) -> dict[str, float]:
    from sqlalchemy import text

    from app.store import deliveries as delivery_store
    from app.store.database import open_database
    from app.store.work import ClaimRequest, Completion

    spent = {"claim": 0.0, "outcomes": 0.0}

    def timed(name: str, call: Any) -> Any:
        async def run(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(*args)
            finally:
                spent[name] += time.perf_counter() - started

        return run

    delivery_store.claim_postgresql = timed("claim", delivery_store.claim_postgresql)  # type: ignore[attr-defined]
    delivery_store.outcomes_postgresql = timed("outcomes", delivery_store.outcomes_postgresql)  # type: ignore[attr-defined]
    db = open_database(url, pool_size=1, durable_commits=False, worker=True)
    async with db.read() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    cpu0, client0, wall0 = backend_cpu(pid), time.process_time(), time.perf_counter()
    claimed, done, cycles = [], 0, 0
    while True:
        now = datetime.now(UTC)
        completions = [
            Completion(w.delivery, "bench", "succeeded", now, 1, 200, None, None, None, now)
            for w in claimed
        ]
        request = ClaimRequest("bench", now, now + timedelta(minutes=5), batch)
        claimed = await delivery_store.complete_and_claim(db, completions, (), request, now)
        done += len(completions)
        cycles += 1
        if not claimed:
            break
    wall, client, cpu = (
        time.perf_counter() - wall0,
        time.process_time() - client0,
        backend_cpu(pid) - cpu0,
    )
    async with db.read() as conn:
        same = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() == pid
        left = (
            await conn.execute(text("SELECT count(*) FROM deliveries WHERE status <> 'succeeded'"))
        ).scalar_one()
    await db.dispose()
    return {
        "delivered": done,
        "left": left,
        "cycles": cycles,
        "one_backend": same,
        "wall_s": round(wall, 3),
        "db_us": round(cpu / done * 1e6, 1),
        "client_us": round(client / done * 1e6, 1),
        "deliveries_per_s": round(done / wall),
        "claim_wall_us": round(spent["claim"] / done * 1e6, 1),
        "outcomes_wall_us": round(spent["outcomes"] / done * 1e6, 1),
    }


def one(args: argparse.Namespace) -> dict[str, float]:
    name = f"store_cycle_{uuid.uuid4().hex[:8]}"
    admin = args.dsn
    base = admin.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://")

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(create())
    try:
        env = dict(os.environ, EVENTRELAY_DATABASE_URL=url)
        subprocess.run(
            [sys.executable, "-c", "import sys, app.cli; sys.exit(app.cli.main())", "migrate"],
            env=env,
            check=True,
            capture_output=True,
        )
        asyncio.run(fill(dsn, args.deliveries, args.ordering, args.sql))
        return asyncio.run(drain(url, args.batch))
    finally:
        asyncio.run(drop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--ordering", choices=("none", "key"), default="none")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline-tree")
    parser.add_argument("--sql", action="append", default=[], help="run after filling")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or not args.baseline_tree:
        print(json.dumps(one(args)))
        return
    here = str(Path(__file__).resolve().parent.parent)
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--baseline-tree")]
    forwarded = [a for a in forwarded if a != args.baseline_tree]
    for n in range(args.rounds):
        for label, tree in (("before", args.baseline_tree), ("after", here)):
            env = dict(os.environ, PYTHONPATH=tree)
            out = subprocess.run(
                [sys.executable, __file__, "--one", *forwarded],
                env=env,
                cwd=tree,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            print(f"round {n + 1} {args.ordering} {label}: {out.strip()}", flush=True)


if __name__ == "__main__":
    main()
