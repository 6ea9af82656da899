"""CPU cost of ``POST /v1/events`` inside the process, without uvicorn or a
network: the ASGI app is called directly, 64 requests at a time.

    .venv/bin/python bench/ingest_inprocess.py [--requests 20000] [--rounds 5]
        [--mode http|full] [--variant NAME=PATCH[,PATCH] ...]

``bench/ingest.py`` measures the real thing but on a shared 2-core machine its
req/s move with whatever else runs. CPU seconds per request of a process
that does nothing else move much less, and here every target runs in its
own fresh process, the same number of requests, interleaved round by round;
the minimum over rounds is the figure least disturbed by neighbours.

Targets: ``bare`` (``bench/bare_app.py``), ``eventrelay``, and one per
``--variant`` (patches from ``bench/patched_serve.py``, to price a proposed
change). Modes:

``http``
    ``IngestService.ingest_one`` is replaced by a stub that returns a canned
    answer: the cost of the HTTP layer (middleware, routing, dependencies,
    auth, body parsing) alone.
``full``
    The real service and group commit on a fresh, migrated SQLite file.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGI = Any  # an ASGI application (FastAPI's own signature is narrower than ours)

BODY = (
    '{{"type":"order.created","key":"customer-{n}","data":{{"order_id":"ord_{i}",'
    '"total":{n}.50,"currency":"EUR","items":[{{"sku":"SKU-{n}","qty":2}},'
    '{{"sku":"SKU-7","qty":1}}],"customer":{{"id":{n},"tier":"gold"}}}},'
    '"occurred_at":"2026-11-26T10:00:00Z"}}'
)


def _scope(headers: list[tuple[bytes, bytes]], path: str = "/v1/events") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def call(app: ASGI, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One request through the ASGI app; returns the status code."""
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    all_headers = [*headers, (b"content-length", str(len(body)).encode())]
    await app(_scope(all_headers, path), receive, send)
    return status


async def drive(app: ASGI, token: str, prefix: str, requests: int, concurrency: int) -> int:
    """Send ``requests`` ingest calls, ``concurrency`` at a time; return how many were 2xx."""
    ok = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal ok
        for i in counter:
            headers = [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"authorization", f"Bearer {token}".encode()),
                (b"idempotency-key", f"{prefix}-{i}".encode()),
            ]
            body = BODY.format(n=i % 5000, i=i).encode()
            if 200 <= await call(app, "/v1/events", headers, body) < 300:
                ok += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def _ingest_token(app: ASGI, admin: str) -> str:
    captured: list[bytes] = []
    body = b'{"scope": "ingest", "description": "bench"}'
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {admin}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            captured.append(message.get("body", b""))

    await app(_scope(headers, "/v1/tokens"), receive, send)
    token: str = json.loads(b"".join(captured))["token"]
    return token


async def measure_eventrelay(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from app.domain.idempotency import Accepted
    from app.main import create_app
    from app.settings import Settings
    from app.store.migrations import upgrade_head

    admin = "bench-admin-token"
    url = f"sqlite+aiosqlite:///{workdir / 'eventrelay.db'}"
    os.environ["EVENTRELAY_DATABASE_URL"] = url
    os.environ["EVENTRELAY_ADMIN_TOKEN"] = admin
    await asyncio.to_thread(upgrade_head, url)
    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        token = await _ingest_token(app, admin)
        if args.mode == "http":
            canned = Accepted("evt_01JDBENCHBENCHBENCHBENCHBE", '{"id":"evt_x"}', False)

            async def ingest_one(document: Any, key: str | None) -> Accepted:
                return canned

            app.state.services.ingest.ingest_one = ingest_one
        await drive(app, token, "warm", min(2000, args.requests), args.concurrency)
        return await _timed(app, token, args)


async def measure_bare(args: argparse.Namespace) -> dict[str, Any]:
    from bare_app import create_app

    app = create_app()
    return await _timed(app, "bare", args)


async def _timed(app: Any, token: str, args: argparse.Namespace) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    ok = await drive(app, token, f"run-{os.getpid()}", args.requests, args.concurrency)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"ok": ok, "cpu_us": 1e6 * cpu / args.requests, "rps": args.requests / wall}


def child(args: argparse.Namespace) -> None:
    """Measure one target in this process and print the result as JSON."""
    import uvloop

    sys.path.insert(0, str(BENCH))
    if args.child == "bare":
        result = uvloop.run(measure_bare(args))
    else:
        if args.patches:
            from patched_serve import PATCHES

            names = [n for n in args.patches.split(",") if n]
            for name in names:
                PATCHES[name]()
        with tempfile.TemporaryDirectory(prefix="eventrelay-inproc-") as tmp:
            result = uvloop.run(measure_eventrelay(args, Path(tmp)))
    print(json.dumps(result))


def run_child(name: str, patches: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "bare" if name == "bare" else "eventrelay"]
    command += ["--patches", patches, "--mode", args.mode]
    command += ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTRELAY_")}
    env["EVENTRELAY_LOG_LEVEL"] = "WARNING"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--mode", choices=("http", "full"), default="http")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATCHES")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--patches", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    targets = [("bare", ""), ("eventrelay", "")] + [
        (v.partition("=")[0], v.partition("=")[2]) for v in args.variant
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in targets}
    for number in range(1, args.rounds + 1):
        for name, patches in targets:
            found = run_child(name, patches, args)
            results[name].append(found)
            print(
                f"round {number} {name:24} {found['cpu_us']:8.1f} µs CPU/req "
                f"{found['rps']:9,.0f} req/s  2xx {found['ok']}",
                file=sys.stderr,
                flush=True,
            )
    base = min(r["cpu_us"] for r in results["eventrelay"])
    bare = min(r["cpu_us"] for r in results["bare"])
    print(
        f"\nmode {args.mode}, {args.requests} requests x {args.rounds} rounds, "
        f"concurrency {args.concurrency}, load average {os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| target | patches | CPU µs/req (min) | CPU µs/req (median) | vs eventrelay "
        "| bare/target | 2xx |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name, patches in targets:
        mine = results[name]
        low = min(r["cpu_us"] for r in mine)
        mid = statistics.median(r["cpu_us"] for r in mine)
        ok = "all" if all(r["ok"] == args.requests for r in mine) else "MISSING"
        print(
            f"| {name} | {patches or '-'} | {low:,.1f} | {mid:,.1f} | {low - base:+,.1f} "
            f"| {bare / low:.2f} | {ok} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
