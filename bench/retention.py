"""Database size under a steady load with retention on: it must plateau.

    .venv/bin/python bench/retention.py [--seconds 180] [--rate 200]
                                        [--retention-seconds 20] [--backend sqlite|postgres]

Starts ``bench/receiver.py`` and ``eventrelay serve`` (embedded worker) with a
retention window of ``--retention-seconds`` (``EVENTRELAY_RETENTION_DAYS`` as a
fraction of a day, the idempotency TTL the same, the retention job every 5 s),
one subscription to the receiver, then posts ``--rate`` events a second in
batches for ``--seconds``. Every 10 s it samples the database size (SQLite:
the file plus its WAL; PostgreSQL: ``pg_database_size``) and the rows kept.

Without retention the database grows linearly with the events; with it, the
rows kept settle at about ``rate × (retention + interval)`` and the size stops
growing (SQLite reuses freed pages rather than shrinking the file). The
verdict compares the size growth over the last third of the run with the
growth over the first third.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import time
from pathlib import Path

import httpx
from common import database_bytes, run_on_fresh_database, start_receiver, start_server

SAMPLE_SECONDS = 10.0
BATCH = 20


def retention_env(retention_s: float) -> dict[str, str]:
    return {
        "EVENTRELAY_RETENTION_DAYS": repr(retention_s / 86400),
        "EVENTRELAY_IDEMPOTENCY_TTL_SECONDS": str(max(int(retention_s), 1)),
        "EVENTRELAY_RETENTION_INTERVAL_SECONDS": "5",
    }


async def run(args: argparse.Namespace, url: str, sqlite_path: Path | None, workdir: Path) -> int:
    token = secrets.token_urlsafe(24)
    receiver, receiver_port = start_receiver()
    server, base = start_server(url, workdir, token, retention_env(args.retention_seconds))
    headers = {"Authorization": f"Bearer {token}"}
    samples: list[tuple[float, int, int, int, int]] = []
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            created = await client.post(
                "/v1/subscriptions",
                json={"url": f"http://127.0.0.1:{receiver_port}/hook", "ordering": "none"},
            )
            created.raise_for_status()
            sent = 0
            started = time.monotonic()
            next_sample = started
            while (now := time.monotonic()) - started < args.seconds:
                items = [
                    {
                        "idempotency_key": f"ret-{sent + i}",
                        "type": "order.created",
                        "key": f"customer-{(sent + i) % 500}",
                        "data": {"n": sent + i, "pad": "x" * 200},
                    }
                    for i in range(BATCH)
                ]
                answer = await client.post("/v1/events/batch", json={"events": items})
                answer.raise_for_status()
                sent += BATCH
                if now >= next_sample:
                    stats = (await client.get("/v1/stats")).json()
                    size = await database_bytes(url, sqlite_path)
                    kept, succeeded = stats["events"], stats["deliveries"]["succeeded"]
                    samples.append((now - started, sent, kept, succeeded, size))
                    print(
                        f"t={now - started:5.0f}s sent={sent:7,} kept events={kept:6,} "
                        f"succeeded={succeeded:6,} size={size / 1e6:7.2f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
                    next_sample += SAMPLE_SECONDS
                await asyncio.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
    finally:
        for proc in (server, receiver):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return report(args, samples)


def report(args: argparse.Namespace, samples: list[tuple[float, int, int, int, int]]) -> int:
    print(
        f"## Retention: {args.backend}, {args.rate} events/s for {args.seconds:g} s, "
        f"retention {args.retention_seconds:g} s\n"
    )
    print("| t (s) | events sent | events kept | succeeded deliveries kept | database MB |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for t, sent, kept, succeeded, size in samples:
        print(f"| {t:.0f} | {sent:,} | {kept:,} | {succeeded:,} | {size / 1e6:.2f} |")
    third = max(len(samples) // 3, 2)
    early = samples[third - 1][4] - samples[0][4]
    late = samples[-1][4] - samples[-third][4]
    plateau = late <= max(early * 0.25, 0.5e6)
    print(
        f"\nsize growth: first third {early / 1e6:+.2f} MB, last third {late / 1e6:+.2f} MB "
        f"→ {'plateau' if plateau else 'STILL GROWING'}"
    )
    return 0 if plateau else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--rate", type=float, default=200, help="events per second")
    parser.add_argument("--retention-seconds", type=float, default=20)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    return run_on_fresh_database(
        args.backend,
        args.pg_dsn,
        "retention",
        lambda url, path, workdir: run(args, url, path, workdir),
    )


if __name__ == "__main__":
    sys.exit(main())
