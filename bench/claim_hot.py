"""Would a claim that leaves the delivery's indexed columns alone save PostgreSQL's CPU?

    .venv/bin/python bench/claim_hot.py [--dsn postgresql://postgres@127.0.0.1:5432/test]
        [--deliveries 100000] [--batch 256] [--rounds 2]

The claim moves a delivery from ``pending`` to ``in_flight``. ``status`` is in
the claim index's predicate and in other indexes, so the new row version is
never a heap-only (HOT) update: it gets an entry in every index whose
predicate it satisfies (four, five with an ordering key). The alternative is a
claim that writes only the lease (``lease_owner``, ``lease_expires_at``, in no
index), with "in flight" read as "pending and leased": a HOT update when the
row's page has room, but every later claim walks past the leased rows still in
the claim index.

Each drain runs on a fresh database migrated with this tree's code and filled
with ``--deliveries`` pending deliveries of one subscription, then claims
``--batch`` at a time (own transaction) and finishes them (``succeeded``,
own transaction) until none is left, with the same finish for both claims. It
reports PostgreSQL's CPU per delivery (the backend's, from ``/proc``) and the
share of updates that were HOT, for three variants in turn, ``--rounds``
times: the claim as it is (``status``), the lease-only claim on the table as
it is (``lease``, fillfactor 100), and the lease-only claim with fillfactor 70
(``lease-ff70``: room on each page for new versions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from common import process_cpu_seconds, run_on_fresh_database
from store_cycle import fill

_WALK = """SELECT seq FROM deliveries
    WHERE status = 'pending' AND ready AND next_attempt_at <= now() {extra}
    ORDER BY next_attempt_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED"""
CLAIMS = {
    "status": f"""UPDATE deliveries SET status = 'in_flight', lease_owner = 'bench',
        lease_expires_at = now() + interval '5 minutes'
        WHERE seq = ANY(ARRAY({_WALK.format(extra="")})) RETURNING seq""",
    "lease": f"""UPDATE deliveries SET lease_owner = 'bench',
        lease_expires_at = now() + interval '5 minutes'
        WHERE seq = ANY(ARRAY({_WALK.format(extra="AND lease_owner IS NULL")})) RETURNING seq""",
}
FINISH = """UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1,
    completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
    WHERE seq = ANY($1::bigint[])"""
VARIANTS = {"status": ("status", 100), "lease": ("lease", 100), "lease-ff70": ("lease", 70)}


async def drain(dsn: str, claim: str, batch: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    await conn.execute("SET synchronous_commit = off")
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    cpu0, done = process_cpu_seconds(pid), 0
    while True:
        async with conn.transaction():
            seqs = [r[0] for r in await conn.fetch(claim, batch)]
        if not seqs:
            break
        async with conn.transaction():
            await conn.execute(FINISH, seqs)
        done += len(seqs)
    cpu = process_cpu_seconds(pid) - cpu0
    await conn.close()
    return {"delivered": done, "db_us": round(cpu / done * 1e6, 1), **await hot_share(dsn, done)}


async def hot_share(dsn: str, done: int) -> dict[str, float]:
    """The share of the drain's updates (a claim and a finish per delivery) that
    were HOT, once the backend's statistics have reached the server (it sends
    them within about a second of its transactions)."""
    conn = await asyncpg.connect(dsn)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            hot, updated = await conn.fetchrow(
                "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables"
                " WHERE relname = 'deliveries'"
            )
            if updated >= 2 * done or loop.time() > deadline:
                return {"hot_share": round(hot / max(updated, 1), 3), "updates": updated}
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def one(admin: str, variant: str, deliveries: int, batch: int) -> dict[str, float]:
    claim, fillfactor = VARIANTS[variant]
    result: dict[str, float] = {}

    async def run(url: str, _sqlite: Path | None, _workdir: Path) -> int:
        env = dict(os.environ, EVENTRELAY_DATABASE_URL=url)
        migrate = "import sys, app.cli; sys.exit(app.cli.main())"
        subprocess.run(
            [sys.executable, "-c", migrate, "migrate"], env=env, check=True, capture_output=True
        )
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"ALTER TABLE deliveries SET (fillfactor = {fillfactor})")
        await conn.close()
        await fill(dsn, deliveries, "none", [])
        result.update(await drain(dsn, CLAIMS[claim], batch))
        return 0

    run_on_fresh_database("postgres", admin, "claim_hot", run)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for n in range(args.rounds):
        for variant in VARIANTS:
            result = one(args.dsn, variant, args.deliveries, args.batch)
            print(json.dumps({"round": n + 1, "variant": variant, **result}), flush=True)


if __name__ == "__main__":
    main()
