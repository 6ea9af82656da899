"""The delivery failure path's store cost: cycles that dead-letter every delivery.

    .venv/bin/python bench/dead_letters.py [--baseline-tree PATH] [--backend sqlite|postgres|both]
                                           [--deliveries 6000] [--rounds 3]

Each measurement is a child process on a fresh, migrated database (SQLite file,
or a PostgreSQL database created on ``--pg-dsn`` and dropped after) with one
subscription (``ordering: none``, no retries) and ``--deliveries`` events
ingested; it then runs the worker's cycle (:func:`app.store.deliveries.complete_and_claim`)
the way ``eventrelay worker`` does (its engine settings), each cycle writing the
previous cycle's 64 outcomes as dead letters and claiming 64 more, and reports
deliveries dead-lettered per second. No HTTP: the store's share of the failure
path, where operator events add their writes. ``--outcome succeeded`` runs the
same cycles with every attempt a success (the path operator events must leave
alone).

Variants, interleaved round by round so that the machine's drift hits all alike:

* ``baseline``: the code of ``--baseline-tree`` (a checkout without operator
  events), imported through ``PYTHONPATH``;
* ``no listener``: this checkout, no subscription names operator events (so
  none is made: each dead-lettering cycle reads the listeners once);
* ``listener``: this checkout and one ``eventrelay.*`` subscription, so each
  report also gets a delivery (not claimed here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


async def _child(url: str, deliveries: int, listener: bool, outcome: str) -> dict[str, object]:
    import app
    from app.domain.events import NewEvent
    from app.domain.ids import new_id
    from app.domain.subscriptions import SubscriptionCreate
    from app.services.subscriptions import SubscriptionService
    from app.store.database import open_database
    from app.store.deliveries import complete_and_claim
    from app.store.ingest import ingest
    from app.store.migrations import upgrade_head
    from app.store.work import ClaimRequest, Completion

    await asyncio.to_thread(upgrade_head, url)
    setup = open_database(url)
    service = SubscriptionService(setup, allow_private_targets=True)
    await service.create(
        "default",
        SubscriptionCreate(url="http://127.0.0.1:9/hook", ordering="none", retry_schedule=[]),
    )
    exclude = []
    if listener:
        ops = await service.create(
            "default",
            SubscriptionCreate(url="http://127.0.0.1:9/ops", event_types=["eventrelay.*"]),
        )
        exclude.append(ops.id)
    now = datetime.now(UTC)
    for start in range(0, deliveries, 500):
        events = [
            NewEvent(
                new_id("evt"), "order.created", None, f'{{"n": {n}}}', None, None, now, None, None
            )
            for n in range(start, min(start + 500, deliveries))
        ]
        await ingest(setup, [events], ttl=timedelta(days=1), now=now)
    await setup.dispose()

    db = open_database(url, durable_commits=False, worker=True)
    owner = "bench"
    done, finished = 0, list[Completion]()
    started = time.perf_counter()
    while True:
        moment = datetime.now(UTC)
        request = ClaimRequest(owner, moment, moment + timedelta(minutes=5), BATCH, exclude)
        work = await complete_and_claim(db, finished, (), request, moment)
        done += len(finished)
        if not work:
            break
        finished = [
            Completion(
                delivery=w.delivery,
                owner=owner,
                status=outcome,
                started_at=moment,
                duration_ms=1,
                status_code=500 if outcome == "dead" else 200,
                error=None,
                response_body="no",
                next_attempt_at=None,
                finished_at=moment,
                summary="schedule exhausted; last: HTTP 500" if outcome == "dead" else None,
            )
            for w in work
        ]
    elapsed = time.perf_counter() - started
    await db.dispose()
    assert done == deliveries, (done, deliveries)
    return {"per_second": done / elapsed, "code": str(Path(app.__file__).parent)}


def _run_child(tree: Path, url: str, deliveries: int, listener: bool, outcome: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--child", url, "--deliveries", str(deliveries)]
    command += ["--outcome", outcome]
    if listener:
        command.append("--listener")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=tree)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["code"]).parent == tree.resolve(), (result, tree)
    return float(result["per_second"])


def _fresh_url(backend: str, dsn: str, directory: Path) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{directory / (uuid.uuid4().hex + '.db')}", None
    name = f"bench_dead_{uuid.uuid4().hex[:10]}"
    _psql(dsn, f"CREATE DATABASE {name}")
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}", name


def _psql(dsn: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--listener", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-tree", default="/work/main")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--deliveries", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--outcome",
        choices=("dead", "succeeded"),
        default="dead",
        help="what every attempt ends in (succeeded: the success path, for comparison)",
    )
    args = parser.parse_args()
    if args.child:
        result = _child(args.child, args.deliveries, args.listener, args.outcome)
        print(json.dumps(asyncio.run(result)))
        return
    variants = [
        ("baseline", Path(args.baseline_tree), False),
        ("no listener", ROOT, False),
        ("listener", ROOT, True),
    ]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
            for r in range(args.rounds):
                # Each round starts with another variant: no one always runs first.
                for name, tree, listener in variants[r % 3 :] + variants[: r % 3]:
                    url, dropped = _fresh_url(backend, args.pg_dsn, Path(tmp))
                    try:
                        rate = _run_child(tree, url, args.deliveries, listener, args.outcome)
                        rates[name].append(rate)
                    finally:
                        if dropped:
                            _psql(args.pg_dsn, f"DROP DATABASE {dropped} WITH (FORCE)")
            base = statistics.median(rates["baseline"])
            for name, values in rates.items():
                shown = ", ".join(f"{v:,.0f}" for v in values)
                median = statistics.median(values)
                print(
                    f"{backend:8} {name:12} median {median:8,.0f} {args.outcome}/s"
                    f"  ({shown})  ratio {median / base:.2f}"
                )


if __name__ == "__main__":
    main()
