"""A steady load for ten minutes or more: does any cost creep up as tables churn?

    .venv/bin/python bench/soak.py [--backend sqlite|postgres] [--minutes 10]
                                   [--keys 100000] [--rate N] [--retention-seconds 60]

Starts ``bench/receiver.py`` and ``eventrelay serve`` (embedded worker,
retention on with a window of ``--retention-seconds``, the job every 5 s) with
one subscription, ordered by key, to the receiver. Ordering keys are drawn
from ``--keys`` keys (1 is a single hot key: every delivery waits for the one
before it).

Calibration (unless ``--rate`` is given): wrk at full speed for 10 s, then the
backlog it left is drained; the soak's pace is 70 % of the lower of the two
(ingest's maximum, the drain's deliveries per second), so the worker keeps up.
Then one wrk run a minute at that pace (each connection waits a fixed delay
between requests) while the worker delivers. Per minute it reports events and
deliveries per second, eventrelay's and the database's CPU per event (SQLite
runs in eventrelay's process; PostgreSQL's is the backends of its database), the
p99 of ingest, the database's size and the backlog.

Verdict (the targets of BENCHMARKS.md): in the last minute, CPU per event and
p99 within 1.2x of the second minute; the database's size in the last minute
within 1.2x of its size once the retention window had passed; no non-2xx
answer or socket error; the backlog does not grow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from common import (
    ROOT,
    database_bytes,
    process_cpu_seconds,
    run_on_fresh_database,
    start_receiver,
    start_server,
)

CONNECTIONS = 16


@dataclass
class Minute:
    index: int
    events: int
    deliveries: int
    server_cpu: float
    database_cpu: float
    p99_ms: float
    size: int
    backlog: int
    errors: int

    @property
    def cpu_per_event_us(self) -> float:
        return (self.server_cpu + self.database_cpu) / max(self.events, 1) * 1e6


async def postgres_cpu_seconds(url: str) -> float:
    """CPU of the PostgreSQL backends serving the soak's database (other
    databases' backends on the same server are not counted, nor are the
    server's shared background processes)."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return sum(process_cpu_seconds(int(row["pid"])) for row in pids)


def wrk(base: str, token: str, seconds: float, keys: int, delay_ms: int, c: int) -> dict[str, int]:
    prefix = secrets.token_hex(4)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{c}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "soak.lua"),
            base,
            "--",
            prefix,
            token,
            str(keys),
            str(delay_ms),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    result: dict[str, int] = json.loads(line.removeprefix("BENCH_JSON "))
    return result


async def received(client: httpx.AsyncClient) -> int:
    return int((await client.get("/_stats")).json()["count"])


async def backlog(api: httpx.AsyncClient) -> tuple[int, int]:
    stats = (await api.get("/v1/stats")).json()
    pending = stats["deliveries"]["pending"] + stats["deliveries"]["in_flight"]
    return pending, stats["events"]


async def calibrate(
    base: str,
    token: str,
    keys: int,
    api: httpx.AsyncClient,
    receiver: httpx.AsyncClient,
    subscription: str,
) -> tuple[float, float]:
    """Ingest's maximum and the worker's drain, in events (deliveries) per second.

    The subscription is paused while wrk posts at full speed for 10 s, then
    resumed: the drain is timed from the resume to the backlog's last arrival.
    """
    path = f"/v1/subscriptions/{subscription}"
    (await api.patch(path, json={"status": "paused"})).raise_for_status()
    burst = wrk(base, token, 10, keys, 0, 64)
    ingest = burst["requests"] / (burst["duration_us"] / 1e6)
    backlog_size = (await backlog(api))[0]
    start, t0 = await received(receiver), time.monotonic()
    (await api.patch(path, json={"status": "active"})).raise_for_status()
    deadline = t0 + 900
    while await received(receiver) - start < backlog_size and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    drain = (await received(receiver) - start) / (time.monotonic() - t0)
    return ingest, drain


async def soak(args: argparse.Namespace, url: str, sqlite_path: Path | None, workdir: Path) -> int:
    token = secrets.token_urlsafe(24)
    receiver_proc, receiver_port = start_receiver()
    settings = {
        "EVENTRELAY_RETENTION_DAYS": repr(args.retention_seconds / 86400),
        "EVENTRELAY_IDEMPOTENCY_TTL_SECONDS": str(int(args.retention_seconds)),
        "EVENTRELAY_RETENTION_INTERVAL_SECONDS": "5",
    }
    server, base = start_server(url, workdir, token, settings)
    minutes: list[Minute] = []
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{receiver_port}") as receiver,
        ):
            created = await api.post(
                "/v1/subscriptions",
                json={"url": f"http://127.0.0.1:{receiver_port}/hook", "ordering": "key"},
            )
            created.raise_for_status()
            rate = float(args.rate or 0)
            if not args.rate:
                ingest, drain = await calibrate(
                    base, token, args.keys, api, receiver, created.json()["id"]
                )
                rate = 0.7 * min(ingest, drain)
                print(
                    f"calibration: ingest {ingest:,.0f}/s, drain {drain:,.0f}/s "
                    f"-> pace {rate:,.0f}/s",
                    file=sys.stderr,
                    flush=True,
                )
            # Each connection waits ``delay`` between requests; the first minute
            # corrects it towards the pace (a request's own latency adds to it).
            delay = CONNECTIONS * 1000 / rate
            for index in range(1, args.minutes + 1):
                before = (
                    process_cpu_seconds(server.pid),
                    await postgres_cpu_seconds(url) if sqlite_path is None else 0.0,
                    await received(receiver),
                )
                run = wrk(base, token, 60, args.keys, max(1, round(delay)), CONNECTIONS)
                if index == 1:  # then fixed, so the minutes compared see one load
                    achieved = run["requests"] / (run["duration_us"] / 1e6)
                    delay = max(1.0, delay * achieved / rate)
                after = (
                    process_cpu_seconds(server.pid),
                    await postgres_cpu_seconds(url) if sqlite_path is None else 0.0,
                    await received(receiver),
                )
                pending, _ = await backlog(api)
                minute = Minute(
                    index=index,
                    events=run["requests"],
                    deliveries=after[2] - before[2],
                    server_cpu=after[0] - before[0],
                    database_cpu=after[1] - before[1],
                    p99_ms=run["p99_us"] / 1000,
                    size=await database_bytes(url, sqlite_path),
                    backlog=pending,
                    errors=run["non2xx"] + run["errors"],
                )
                minutes.append(minute)
                print(
                    f"minute {index}: {minute.events / 60:,.0f} events/s, "
                    f"{minute.deliveries / 60:,.0f} deliveries/s, "
                    f"{minute.cpu_per_event_us:,.0f} us CPU/event, p99 {minute.p99_ms:.1f} ms, "
                    f"{minute.size / 1e6:.1f} MB, backlog {pending:,}, errors {minute.errors}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for proc in (server, receiver_proc):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return report(args, minutes, rate)


def report(args: argparse.Namespace, minutes: list[Minute], rate: float) -> int:
    print(
        f"## Soak: {args.backend}, {args.keys:,} keys, pace {rate:,.0f} events/s, "
        f"{args.minutes} minutes, retention {args.retention_seconds:g} s\n"
    )
    print(
        "| minute | events/s | deliveries/s | eventrelay CPU/event | database CPU/event "
        "| p99 | database MB | backlog | errors |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in minutes:
        n = max(m.events, 1)
        print(
            f"| {m.index} | {m.events / 60:,.0f} | {m.deliveries / 60:,.0f} "
            f"| {m.server_cpu / n * 1e6:,.0f} µs | {m.database_cpu / n * 1e6:,.0f} µs "
            f"| {m.p99_ms:.1f} ms | {m.size / 1e6:.1f} | {m.backlog:,} | {m.errors} |"
        )
    second, last = minutes[1], minutes[-1]
    settled = minutes[min(len(minutes) - 1, int(args.retention_seconds // 60) + 1)]
    checks = {
        "CPU per event, last / second minute": last.cpu_per_event_us / second.cpu_per_event_us,
        "p99, last / second minute": last.p99_ms / second.p99_ms,
        "size, last minute / once the window passed": last.size / settled.size,
    }
    print()
    ok = True
    for name, ratio in checks.items():
        ok &= ratio <= 1.2
        print(f"- {name}: {ratio:.2f} ({'ok' if ratio <= 1.2 else 'OVER 1.2'})")
    errors = sum(m.errors for m in minutes)
    growing = last.backlog > max(second.backlog * 2, 1000)
    print(
        f"- errors: {errors}; backlog {second.backlog:,} → {last.backlog:,}"
        f"{' (GROWING)' if growing else ''}"
    )
    return 0 if ok and not errors and not growing else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=None, help="events/s (default: calibrate)")
    parser.add_argument("--retention-seconds", type=float, default=60)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.minutes < 3:
        parser.error("--minutes must be at least 3 (the second and last minutes are compared)")
    return run_on_fresh_database(
        args.backend, args.pg_dsn, "soak", lambda url, path, workdir: soak(args, url, path, workdir)
    )


if __name__ == "__main__":
    sys.exit(main())
