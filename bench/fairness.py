"""Fair slots: one subscription's backlog on a slow receiver against another's new events.

    .venv/bin/python bench/fairness.py [--backend sqlite|postgres] [--deliveries 3000]
                                       [--answer-seconds 1.0] [--jitter 0.5] [--concurrency 256]
                                       [--probes 5] [--json PATH] [--tenants [--timeline PATH]]

``eventrelay serve`` with its embedded worker (``EVENTRELAY_WORKER_CONCURRENCY``
= ``--concurrency``) on a fresh database, and two receivers in this process
(aiohttp on loopback):

1. *idle*: a subscription ``other`` to a receiver that answers at once; its
   latency (``POST /v1/events`` start to arrival) over ``--probes`` events.
2. *loaded*: a subscription ``busy`` (``max_in_flight: 1000``, ``ordering:
   none``) to a receiver that answers after ``--answer-seconds`` (spread
   uniformly by ±``--jitter`` of it, so that the slots do not move in
   lockstep rounds, as with real receivers), then
   ``--deliveries`` events for it; once its receiver holds half the worker's
   slots, ``--probes`` more events for ``other``, one every 0.5 s, and their
   latency again.
3. The busy subscription's drain throughput: deliveries over the time from
   its receiver's first arrival to its last.

Run it on two versions in one sitting (alternating) and compare the ratios:
the latency loaded should be the latency idle plus at most one worker cycle,
and the drain throughput should stay within 10 %.

``--tenants`` measures fairness between tenants instead (API-v2, Tenants):
tenant A has ``--deliveries`` (default 250,000) pending to a receiver that
answers in ``--answer-seconds`` (0.2 s), all pending at once (its subscription
is paused while they are ingested); tenant B, on a fast receiver, sends one
event a second for ``--probes`` seconds (default 120, so that the p99 is the
second worst, not the worst) and then a burst of 500 (one batch), first with
A idle and then with A's backlog draining. It reports B's ingest-to-receipt
latency p50 / p99, stream and burst apart, in both runs (and the stream's
ten slowest events, since one event moves a p99 of 120) (A's receiver runs in
a process of its own, so that its thousand requests a second do not delay B's
receiver's event loop), how much of A's backlog drained while B was measured
(the run fails if all of it did: B would not have been measured loaded to the
end), and the worker's mean cycle (its write transaction) while B was
measured loaded: the target is B's p99 loaded within its p99 idle plus one
cycle; on PostgreSQL also its checkpoints and this database's deadlocks
while B was measured loaded. ``--timeline PATH`` writes each of B's loaded
single events' times on the wall clock (sent, 202, arrival, its delivery's
``created_at`` and its attempt's ``started_at``) and, on PostgreSQL, every 50 ms,
what this database's active backends and the checkpointer were waiting for,
to line a late event up with the server's side. The server is whatever
``eventrelay`` imports: run the code before a change with ``PYTHONPATH`` set to
its tree (``git archive``), from outside the checkout. ``--explain-slow-ms N``
(PostgreSQL) has the server log the plan, with actual rows and buffers, of
every statement on the run's database slower than N ms (``auto_explain``).
``--claim-tenants 1,100,10000`` measures the claim statement's own cost (p50
of 200 claims of 32, in-process on the store) with a backlog of 30,000 pending
deliveries spread over that many tenants; plain claims, and probe claims whose
fresh walk leaves tenant t1 out as crowding. ``--claim-held 1000,100000``
measures the same claim's cost next to a paused subscription's due backlog of
that size, with nothing else to claim, before and after the worker parks it
(app/store/parking.py). ``--worker-process`` (with
``--tenants``) runs the other deployment shape: ``eventrelay serve
--no-worker`` and an ``eventrelay worker`` of its own (woken by ``NOTIFY`` on
PostgreSQL, by the doorbell on SQLite), the cycles read off the worker's
metrics port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiohttp import web
from common import free_port, pg_execute

VENV_BIN = Path(sys.executable).parent
ADMIN = "er_bench_fairness_admin_token_0123456789"
READY_SECONDS = 60.0
STALL_SECONDS = 120.0


class Receiver:
    """Records each request's ``webhook-id`` and arrival; answers 200 after
    ``delay`` (± ``jitter`` of it)."""

    def __init__(self, delay: float, jitter: float = 0.0) -> None:
        self.delay = delay
        self.jitter = jitter
        self._random = random.Random(42)
        self.arrivals: dict[str, float] = {}
        self.arrived_at: dict[str, float] = {}  # the same arrivals on the wall clock
        self.times: list[float] = []
        self.in_progress = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, backlog=2048).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response({"arrivals": len(self.arrivals), "in_progress": self.in_progress})

    async def _handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        await request.read()
        self.arrivals.setdefault(request.headers.get("webhook-id", ""), now)
        self.arrived_at.setdefault(request.headers.get("webhook-id", ""), time.time())
        self.times.append(now)
        self.in_progress += 1
        try:
            if self.delay:
                spread = self._random.uniform(-self.jitter, self.jitter)
                await asyncio.sleep(self.delay * (1 + spread))
        finally:
            self.in_progress -= 1
        return web.Response(status=200)


class ReceiverProcess:
    """A slow :class:`Receiver` in a process of its own (this script with
    ``--serve-receiver``), so that its thousand requests a second do not hold
    up the event loop of the fast receiver whose arrivals are timed."""

    def __init__(self, delay: float, jitter: float) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-receiver",
                "--answer-seconds",
                str(delay),
                "--jitter",
                str(jitter),
            ],
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline().decode().split()
        if ready[:1] != ["READY"]:
            raise RuntimeError("the slow receiver did not start")
        self.port = int(ready[1])
        self._client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}")

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stats(self) -> dict[str, int]:
        answer: dict[str, int] = (await self._client.get("/stats")).json()
        return answer

    async def close(self) -> None:
        await self._client.aclose()
        self._proc.terminate()
        self._proc.wait(timeout=10)


async def serve_receiver(args: argparse.Namespace) -> None:
    receiver = await Receiver(args.answer_seconds, args.jitter).start()
    print(f"READY {receiver.port}", flush=True)
    await asyncio.Event().wait()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def latency(client: httpx.AsyncClient, receiver: Receiver, event_type: str) -> float:
    sent = time.time()
    started = time.monotonic()
    response = await client.post(
        "/v1/events",
        json={"type": event_type, "data": {}},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    response.raise_for_status()
    ACCEPTED.append(time.monotonic() - started)
    event_id = response.json()["id"]
    accepted = time.time()
    await wait_for(lambda: event_id in receiver.arrivals, STALL_SECONDS, f"event {event_id}")
    TIMELINE.append(
        {
            "event": event_id,
            "sent": sent,
            "accepted": accepted,
            "arrived": receiver.arrived_at[event_id],
            "latency": receiver.arrivals[event_id] - started,
        }
    )
    return receiver.arrivals[event_id] - started


ACCEPTED: list[float] = []  # how long each 202 took (the ingest share of the latency)
# Each single event's times on the wall clock (sent, 202, arrival), to line up
# with the server's: the attempts' started_at, PostgreSQL's backends and log.
TIMELINE: list[dict[str, Any]] = []


async def publish_many(client: httpx.AsyncClient, event_type: str, count: int) -> None:
    for start in range(0, count, 500):
        items = [
            {"idempotency_key": uuid.uuid4().hex, "type": event_type, "data": {"n": n}}
            for n in range(start, min(count, start + 500))
        ]
        response = await client.post("/v1/events/batch", json={"events": items})
        response.raise_for_status()


@dataclasses.dataclass
class Server:
    """``eventrelay serve`` and, with ``--worker-process``, ``eventrelay worker``."""

    procs: list[subprocess.Popen[bytes]]
    base_url: str
    metrics_url: str  # where the worker's metrics are

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def start_server(
    db_url: str, workdir: Path, concurrency: int, *, worker_process: bool = False
) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTRELAY_")}
    env.update(
        {
            "EVENTRELAY_DATABASE_URL": db_url,
            "EVENTRELAY_ADMIN_TOKEN": ADMIN,
            "EVENTRELAY_ALLOW_PRIVATE_TARGETS": "true",
            "EVENTRELAY_WORKER_CONCURRENCY": str(concurrency),
            "EVENTRELAY_SHUTDOWN_GRACE_SECONDS": "1",
        }
    )
    port = free_port()
    log = (workdir / "serve.log").open("ab")
    command = [str(VENV_BIN / "eventrelay"), "serve", "--port", str(port)]
    procs = [
        subprocess.Popen(
            command + (["--no-worker"] if worker_process else []),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    ]
    base_url = f"http://127.0.0.1:{port}"
    server = Server(procs, base_url, f"{base_url}/metrics")
    try:
        await _ready(procs[0], f"{base_url}/readyz", workdir / "serve.log")
        if worker_process:
            metrics_port = free_port()
            procs.append(
                subprocess.Popen(
                    [str(VENV_BIN / "eventrelay"), "worker"],
                    stdout=(workdir / "worker.log").open("ab"),
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    env=env | {"EVENTRELAY_WORKER_METRICS_PORT": str(metrics_port)},
                )
            )
            server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            await _ready(procs[1], server.metrics_url, workdir / "worker.log")
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    return server


async def _ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:])
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} was not ready in time")


async def run(args: argparse.Namespace, db_url: str, workdir: Path) -> dict[str, Any]:
    other = await Receiver(0.0).start()
    busy = await Receiver(args.answer_seconds, args.jitter).start()
    server = await start_server(db_url, workdir, args.concurrency)
    try:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30.0
        ) as client:
            for name, receiver, extra in (
                ("other", other, {}),
                ("busy", busy, {"max_in_flight": 1000, "ordering": "none"}),
            ):
                response = await client.post(
                    "/v1/subscriptions",
                    json={"url": receiver.url(), "event_types": [name], **extra},
                )
                response.raise_for_status()
            idle = [await latency(client, other, "other") for _ in range(args.probes)]

            await publish_many(client, "busy", args.deliveries)
            await wait_for(
                lambda: busy.in_progress >= args.concurrency // 2, STALL_SECONDS, "the busy load"
            )
            loaded = []
            for _ in range(args.probes):
                loaded.append(await latency(client, other, "other"))
                await asyncio.sleep(0.5)
            await wait_for(
                lambda: len(busy.arrivals) >= args.deliveries, STALL_SECONDS * 5, "the busy drain"
            )
    finally:
        server.stop()
        await other.close()
        await busy.close()
    drain_seconds = max(busy.times) - min(busy.times)
    return {
        "backend": args.backend,
        "concurrency": args.concurrency,
        "deliveries": args.deliveries,
        "answer_seconds": args.answer_seconds,
        "jitter": args.jitter,
        "idle_latency_s": {"median": statistics.median(idle), "max": max(idle)},
        "loaded_latency_s": {"median": statistics.median(loaded), "max": max(loaded)},
        "busy_drain_per_s": args.deliveries / drain_seconds if drain_seconds else 0.0,
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def tenant_latencies(
    client: httpx.AsyncClient, receiver: Receiver, probes: int, burst: int
) -> tuple[list[float], list[float]]:
    """B's traffic: one event a second for ``probes`` seconds, then a burst of
    ``burst`` events in one batch. Returns each part's latencies."""
    stream = []
    for _ in range(probes):
        stream.append(await latency(client, receiver, "b.thing"))
        await asyncio.sleep(max(0.0, 1.0 - stream[-1]))
    started = time.monotonic()
    items = [
        {"idempotency_key": uuid.uuid4().hex, "type": "b.thing", "data": {"n": n}}
        for n in range(burst)
    ]
    response = await client.post("/v1/events/batch", json={"events": items})
    response.raise_for_status()
    ids = [item["id"] for item in response.json()["items"]]
    await wait_for(lambda: all(i in receiver.arrivals for i in ids), STALL_SECONDS, "the burst")
    return stream, [receiver.arrivals[i] - started for i in ids]


async def cycle_totals(
    client: httpx.AsyncClient, metrics_url: str
) -> tuple[float, float, float, float]:
    """The worker's cycles so far, from /metrics: seconds in them, how many, and
    how many took no more than 5 and 10 ms."""
    text = (await client.get(metrics_url)).text
    five, ten = '_bucket{le="0.005"}', '_bucket{le="0.01"}'
    totals = {"_sum": 0.0, "_count": 0.0, five: 0.0, ten: 0.0}
    for line in text.splitlines():
        for suffix in totals:
            if line.startswith(f"eventrelay_claim_duration_seconds{suffix}"):
                totals[suffix] = float(line.rsplit(" ", 1)[1])
    return totals["_sum"], totals["_count"], totals[five], totals[ten]


async def checkpoints(db_url: str) -> int | None:
    """PostgreSQL's checkpoints so far, the whole server's (None on SQLite): a
    checkpoint under way slows every commit with its writes."""
    if not db_url.startswith("postgresql"):
        return None
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        try:
            count = await conn.fetchval(
                "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
            )
        except asyncpg.UndefinedColumnError:  # PostgreSQL 17 moved them
            count = await conn.fetchval(
                "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
            )
        return int(count)
    finally:
        await conn.close()


SAMPLE = """
    SELECT extract(epoch FROM clock_timestamp())::float8,
           (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
           coalesce(json_agg(json_build_array(
               pid, backend_type, state, wait_event_type, wait_event,
               extract(epoch FROM clock_timestamp() - query_start)::float8, left(query, 60)
           )) FILTER (WHERE pid IS NOT NULL), '[]')::text
    FROM pg_stat_activity
    WHERE pid <> pg_backend_pid()
      AND ((datname = $1 AND state = 'active') OR backend_type = 'checkpointer')
"""


async def sample_server(db_url: str, samples: list[Any], stop: asyncio.Event) -> None:
    """Every 50 ms until ``stop``: PostgreSQL's checkpoint count and what this
    database's active backends (and the checkpointer) are doing and waiting for."""
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            at, count, backends = await conn.fetchrow(SAMPLE, dsn.rsplit("/", 1)[1])
            samples.append([at, count, json.loads(backends)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await conn.close()


ATTEMPTS_STARTED_SQLITE = (
    "SELECT d.event_id, d.created_at, a.started_at"
    " FROM deliveries d JOIN attempts a ON a.delivery_id = d.id"
    " WHERE d.tenant_id = ? ORDER BY a.started_at"
)


def _epoch(stored: str) -> float:
    """SQLite's stored UTC time (text without a zone) as epoch seconds."""
    return datetime.fromisoformat(stored).replace(tzinfo=UTC).timestamp()


async def attempts_started(db_url: str, tenant: str) -> dict[str, list[float]]:
    """Each of ``tenant``'s events: when its delivery was created and its
    attempts started (epoch seconds, the server's clock), read after the run."""
    if db_url.startswith("sqlite"):
        path = db_url.split(":///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute(ATTEMPTS_STARTED_SQLITE, (tenant,)).fetchall()
        return {r[0]: [_epoch(r[1]), _epoch(r[2])] for r in rows}
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT d.event_id, extract(epoch FROM d.created_at)::float8 AS created,"
            " extract(epoch FROM a.started_at)::float8 AS started"
            " FROM deliveries d JOIN attempts a ON a.delivery_id = d.id"
            " WHERE d.tenant_id = $1 ORDER BY a.started_at",
            tenant,
        )
    finally:
        await conn.close()
    return {r["event_id"]: [r["created"], r["started"]] for r in rows}


async def deadlocks(db_url: str) -> int | None:
    """PostgreSQL's deadlocks so far in this database (None on SQLite)."""
    if not db_url.startswith("postgresql"):
        return None
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        query = "SELECT deadlocks FROM pg_stat_database WHERE datname = $1"
        return int(await conn.fetchval(query, dsn.rsplit("/", 1)[1]))
    finally:
        await conn.close()


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5), 4), "p99": round(percentile(values, 0.99), 4)}


async def run_tenants(args: argparse.Namespace, db_url: str, workdir: Path) -> dict[str, Any]:
    fast = await Receiver(0.0).start()
    slow = ReceiverProcess(args.answer_seconds, args.jitter)
    server = await start_server(
        db_url, workdir, args.concurrency, worker_process=args.worker_process
    )
    base_url = server.base_url
    headers = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with (
            httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60.0) as root,
            httpx.AsyncClient(
                base_url=base_url, headers=headers | {"Eventrelay-Tenant": "a"}, timeout=60.0
            ) as a,
            httpx.AsyncClient(
                base_url=base_url,
                headers=headers | {"Eventrelay-Tenant": "b"},
                timeout=60.0,
                limits=httpx.Limits(max_connections=64),
            ) as b,
        ):
            for tenant in ("a", "b"):
                (
                    await root.post("/v1/tenants", json={"id": tenant, "name": tenant})
                ).raise_for_status()
            sub = {"url": slow.url(), "max_in_flight": 1000, "ordering": "none"}
            created = await a.post("/v1/subscriptions", json=sub)
            created.raise_for_status()
            a_sub = created.json()["id"]
            (await b.post("/v1/subscriptions", json={"url": fast.url()})).raise_for_status()
            idle = await tenant_latencies(b, fast, args.probes, args.burst)
            idle_accepted = ACCEPTED[:]
            ACCEPTED.clear()
            # A's backlog is all pending at once: held while it is ingested.
            await a.patch(f"/v1/subscriptions/{a_sub}", json={"status": "paused"})
            ingest_started = time.monotonic()
            await publish_many(a, "a.thing", args.deliveries)
            a_ingest_s = time.monotonic() - ingest_started
            if args.backend == "postgres":
                # Statistics that know the backlog, as autovacuum would have
                # gathered by now (this server runs without it); without, the
                # planner guesses a few pending rows and every claim sorts them all.
                await pg_execute(
                    db_url.replace("postgresql+asyncpg://", "postgresql://"), "ANALYZE"
                )
            await a.patch(f"/v1/subscriptions/{a_sub}", json={"status": "active"})
            deadline = time.monotonic() + STALL_SECONDS
            while (await slow.stats())["in_progress"] < args.concurrency // 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("timed out waiting for A's load")
                await asyncio.sleep(0.05)
            pending_at_start = args.deliveries - (await slow.stats())["arrivals"]
            cycles_before = await cycle_totals(root, server.metrics_url)
            checkpoints_before = await checkpoints(db_url)
            deadlocks_before = await deadlocks(db_url)
            TIMELINE.clear()
            samples: list[Any] = []
            stop_sampling = asyncio.Event()
            sampler = None
            if args.timeline is not None and args.backend == "postgres":
                sampler = asyncio.create_task(sample_server(db_url, samples, stop_sampling))
            loaded = await tenant_latencies(b, fast, args.probes, args.burst)
            stop_sampling.set()
            if sampler is not None:
                await sampler
            loaded_accepted = ACCEPTED[:]
            pending_at_end = args.deliveries - (await slow.stats())["arrivals"]
            if pending_at_end <= 0:
                raise RuntimeError("A's backlog drained while B was measured: raise --deliveries")
            cycles_after = await cycle_totals(root, server.metrics_url)
            checkpoints_after = await checkpoints(db_url)
            deadlocks_after = await deadlocks(db_url)
            if args.timeline is not None:
                started = await attempts_started(db_url, "b")
                for entry in TIMELINE:
                    entry["created"], entry["attempt_started"] = started.get(
                        entry["event"], [None, None]
                    )
                args.timeline.write_text(json.dumps({"events": TIMELINE, "server": samples}))
    finally:
        server.stop()
        await fast.close()
        await slow.close()
    cycle = (cycles_after[0] - cycles_before[0]) / max(1.0, cycles_after[1] - cycles_before[1])
    target = percentile(idle[0], 0.99) + cycle
    return {
        "backend": args.backend,
        "worker_process": args.worker_process,
        "concurrency": args.concurrency,
        "b_events_per_phase": len(loaded[0]),
        # The target: B's single events' p99 loaded within p99 idle plus one cycle.
        "target_s": round(target, 4),
        "met": percentile(loaded[0], 0.99) <= target,
        "a_deliveries": args.deliveries,
        # How long A's backlog took to ingest (batches of 500, its subscription paused).
        "a_ingest_s": round(a_ingest_s, 2),
        "a_pending_while_measured": [pending_at_start, pending_at_end],
        "answer_seconds": args.answer_seconds,
        "b_stream_idle_s": summary(idle[0]),
        "b_stream_loaded_s": summary(loaded[0]),
        "b_burst_idle_s": summary(idle[1]),
        "b_burst_loaded_s": summary(loaded[1]),
        # B's single events' slowest ten, idle and loaded (ms): with 120 events
        # the p99 is the second worst, so these show how much one event moved it.
        "b_stream_slowest_ms": {
            phase: [round(v * 1000, 1) for v in sorted(values, reverse=True)[:10]]
            for phase, values in (("idle", idle[0]), ("loaded", loaded[0]))
        },
        "b_202_idle_s": summary(idle_accepted),
        "b_202_loaded_s": summary(loaded_accepted),
        # One worker cycle (its write transaction: outcomes and claim) while B
        # was measured with A loaded: the mean, and how many ran.
        "cycle_loaded_s": round(cycle, 5),
        "cycles_loaded": int(cycles_after[1] - cycles_before[1]),
        # Of those, how many took longer than 5 and than 10 ms (an ingest
        # flush that arrives as one starts waits for it on SQLite).
        "cycles_loaded_over_5_10_ms": [
            int((cycles_after[1] - cycles_before[1]) - (cycles_after[i] - cycles_before[i]))
            for i in (2, 3)
        ],
        # PostgreSQL's checkpoints (the server's, every database's) while B was measured loaded.
        "checkpoints_loaded": (
            None
            if checkpoints_before is None or checkpoints_after is None
            else checkpoints_after - checkpoints_before
        ),
        # The database's deadlocks while B was measured loaded (each holds the
        # transactions in it for PostgreSQL's deadlock_timeout).
        "deadlocks_loaded": (
            None
            if deadlocks_before is None or deadlocks_after is None
            else deadlocks_after - deadlocks_before
        ),
    }


async def claim_cost(
    db_url: str, tenants: int, backlog: int = 30_000, *, held: bool = False
) -> list[float]:
    """p50 seconds of one claim of 32 with ``backlog`` pending deliveries spread
    over ``tenants`` tenants (one subscription each), and of one probe claim
    (up to 8 of them by the fresh walk, tenant t1 crowding). ``held``: tenant
    t1's subscription is paused, so its share of the backlog is due but held;
    the second figure is then a plain claim's once the worker's parking job
    has parked that backlog (app/store/parking.py), and a third one's that
    takes the parked backlog once the subscription is resumed (each claim's
    deliveries kept, so that every claim takes parked ones)."""
    from datetime import timedelta

    from sqlalchemy import text

    from app.store import deliveries, leases
    from app.store.database import open_database
    from app.store.migrations import upgrade_head
    from app.store.work import ClaimRequest
    from app.worker.retention import ParkingJob

    await asyncio.to_thread(upgrade_head, db_url)
    db = open_database(db_url)
    rows = backlog
    try:
        async with db.write() as conn:
            for statement in (
                "INSERT INTO tenants (id, name, metadata, status, created_at, updated_at) "
                "SELECT 't' || g, 't', '{{}}', 'active', :now, :now FROM ({series}) AS s",
                "INSERT INTO subscriptions (id, tenant_id, url, event_types, secret, headers, "
                "ordering, on_dead_letter, max_in_flight, status, created_at, updated_at) "
                "SELECT 'sub_' || g, 't' || g, 'http://127.0.0.1:9/', '[\"*\"]', 'whsec_x', "
                "'{{}}', 'none', 'skip', 32, 'active', :now, :now FROM ({series}) AS s",
                "INSERT INTO events (id, tenant_id, type, data, received_at) "
                "SELECT 'evt_' || g, 't' || (g % :tenants + 1), 'x', '{{}}', :now "
                "FROM ({rows}) AS s",
                "INSERT INTO deliveries (id, tenant_id, event_id, subscription_id, event_type, "
                "status, ready, next_attempt_at, created_at) "
                "SELECT 'dlv_' || g, 't' || (g % :tenants + 1), 'evt_' || g, "
                "'sub_' || (g % :tenants + 1), 'x', 'pending', TRUE, :now, :now "
                "FROM ({rows}) AS s",
            ):
                if db.is_sqlite:
                    series = "WITH RECURSIVE c(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM c "
                    series += "WHERE g < {n}) SELECT g FROM c"
                else:
                    series = "SELECT generate_series(1, {n}) AS g"
                sql = statement.format(series=series.format(n=tenants), rows=series.format(n=rows))
                past = datetime.now(UTC) - timedelta(minutes=1)
                stamp = past.isoformat(" ")[:26] if db.is_sqlite else past
                await conn.execute(text(sql), {"now": stamp, "tenants": tenants})
        if held:
            async with db.write() as conn:
                await conn.execute(
                    text("UPDATE subscriptions SET status = 'paused' WHERE id = 'sub_1'")
                )
        # Statistics as a live installation has them (the retention job refreshes
        # them); without, PostgreSQL guesses three rows and sorts the backlog.
        async with db.write() as conn:
            await conn.execute(text("ANALYZE"))
        # Plain claims, then probe claims (the fresh walk too) with tenant t1
        # crowding the worker; ``held``: plain claims before the held backlog
        # is parked (as in the moments after a pause), then after.
        modes: list[tuple[int, tuple[str, ...], bool]] = [(0, (), False), (8, ("sub_1",), False)]
        if held:
            modes[1:] = [(0, (), True), (0, (), False)]
        costs = []
        job = ParkingJob(db, unparked=lambda: None)
        resumed: tuple[str, ...] = ()
        for fresh, crowding, parked in modes:
            if parked:
                started = time.perf_counter()
                while await job.run_once():
                    pass
                print(f"parked {backlog} in {time.perf_counter() - started:.2f} s", flush=True)
            elif held and costs:  # resumed: claims take the parked backlog
                async with db.write() as conn:
                    await conn.execute(
                        text("UPDATE subscriptions SET status = 'active' WHERE id = 'sub_1'")
                    )
                await job.run_once()
                resumed = job.resumed
                assert resumed == ("sub_1",), resumed
            timings = []
            for n in range(min(200, backlog // 64) if resumed else 200):
                now = datetime.now(UTC)
                request = ClaimRequest(
                    f"bench-{n}",
                    now,
                    now + timedelta(minutes=5),
                    32,
                    (),
                    fresh=fresh,
                    crowding=crowding,
                    resumed=resumed,
                )
                started = time.perf_counter()
                work = await deliveries.complete_and_claim(db, [], request=request)
                timings.append(time.perf_counter() - started)
                assert not resumed or len(work) == 32, len(work)
                if not resumed:
                    await leases.release(db, f"bench-{n}", [w.delivery.seq for w in work])
            costs.append(statistics.median(timings))
        return costs
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def fresh_database(
    args: argparse.Namespace, db_url: str, pg_name: str | None, workdir: Path, name: str
) -> AsyncIterator[str]:
    """The URL of a database of its own, ``name``, dropped afterwards on PostgreSQL."""
    if args.backend == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / f'{name}.db'}"
        return
    database = f"{pg_name}_{name}"
    await pg_execute(args.pg_dsn, f'CREATE DATABASE "{database}"')
    try:
        yield db_url.rsplit("/", 1)[0] + f"/{database}"
    finally:
        await pg_execute(args.pg_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def claim_costs(
    args: argparse.Namespace, db_url: str, pg_name: str | None, workdir: Path
) -> dict[str, Any]:
    """``claim_cost`` for each number of tenants in ``--claim-tenants``, each on
    a fresh database."""
    result: dict[str, Any] = {"backend": args.backend, "claim_p50_ms": {}, "probe_claim_p50_ms": {}}
    for count in (int(c) for c in args.claim_tenants.split(",")):
        async with fresh_database(args, db_url, pg_name, workdir, f"claim{count}") as url:
            cost = await claim_cost(url, count)
        result["claim_p50_ms"][count] = round(cost[0] * 1000, 3)
        result["probe_claim_p50_ms"][count] = round(cost[1] * 1000, 3)
    return result


async def claim_held_costs(
    args: argparse.Namespace, db_url: str, pg_name: str | None, workdir: Path
) -> dict[str, Any]:
    """A claim's cost next to a paused subscription's due backlog of each size
    in ``--claim-held`` (one tenant, nothing else to claim), each on a fresh
    database: what every claim pays while a subscription is paused or its
    circuit is open."""
    result: dict[str, Any] = {"backend": args.backend, "claim_p50_ms": {}}
    result["parked_claim_p50_ms"] = {}
    result["resumed_claim_p50_ms"] = {}
    for count in (int(c) for c in args.claim_held.split(",")):
        async with fresh_database(args, db_url, pg_name, workdir, f"held{count}") as url:
            cost = await claim_cost(url, 1, count, held=True)
        result["claim_p50_ms"][count] = round(cost[0] * 1000, 3)
        result["parked_claim_p50_ms"][count] = round(cost[1] * 1000, 3)
        result["resumed_claim_p50_ms"][count] = round(cost[2] * 1000, 3)
    return result


async def explain_slow(pg_dsn: str, name: str, ms: int) -> None:
    """Have PostgreSQL log the plan of every statement slower than ``ms`` on the
    database ``name`` (auto_explain: actual rows and buffers, no timing, which
    costs little), to the server's log; settings of that database only."""
    settings = {
        "session_preload_libraries": "auto_explain",
        "auto_explain.log_min_duration": f"{ms}ms",
        "auto_explain.log_analyze": "on",
        "auto_explain.log_timing": "off",
        "auto_explain.log_buffers": "on",
    }
    for setting, value in settings.items():
        await pg_execute(pg_dsn, f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--answer-seconds", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--timeline",
        type=Path,
        help="--tenants: write B's loaded events' times and the server's samples here",
    )
    parser.add_argument(
        "--explain-slow-ms",
        type=int,
        default=0,
        help="PostgreSQL: log the plan (rows, buffers) of every statement slower than this",
    )
    parser.add_argument("--tenants", action="store_true", help="fairness between tenants")
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument(
        "--worker-process",
        action="store_true",
        help="--tenants: serve --no-worker and an eventrelay worker of its own",
    )
    parser.add_argument("--claim-tenants", default="", help="e.g. 1,100,10000")
    parser.add_argument("--claim-held", default="", help="e.g. 1000,10000,100000")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        await serve_receiver(args)
        return
    if args.tenants:
        args.deliveries = 250_000 if args.deliveries == 3000 else args.deliveries
        args.answer_seconds = 0.2 if args.answer_seconds == 1.0 else args.answer_seconds
        args.probes = 120 if args.probes == 5 else args.probes

    workdir = Path(tempfile.mkdtemp(prefix="eventrelay-fairness-"))
    pg_name = None
    try:
        if args.backend == "sqlite":
            db_url = f"sqlite+aiosqlite:///{workdir / 'eventrelay.db'}"
        else:
            pg_name = f"er_fair_{uuid.uuid4().hex[:10]}"
            await pg_execute(args.pg_dsn, f'CREATE DATABASE "{pg_name}"')
            if args.explain_slow_ms:
                await explain_slow(args.pg_dsn, pg_name, args.explain_slow_ms)
            base = args.pg_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            db_url = f"{base}/{pg_name}"
        if args.claim_tenants or args.claim_held:
            measure = claim_costs if args.claim_tenants else claim_held_costs
            result = await measure(args, db_url, pg_name, workdir)
            print(json.dumps(result))
            if args.json is not None:
                args.json.write_text(json.dumps(result, indent=2))
            return
        if args.tenants:
            started = time.strftime("%H:%M", time.gmtime())
            load = os.getloadavg()[0]
            result = await run_tenants(args, db_url, workdir)
            result["utc"] = f"{started}-{time.strftime('%H:%M', time.gmtime())}"
            result["load"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            print(json.dumps(result))
            if args.json is not None:
                args.json.write_text(json.dumps(result, indent=2))
            return
        result = await run(args, db_url, workdir)
    finally:
        if pg_name is not None:
            await pg_execute(args.pg_dsn, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
    idle, loaded = result["idle_latency_s"], result["loaded_latency_s"]
    print(
        f"{args.backend}: other subscription latency idle median {idle['median']:.3f} s "
        f"max {idle['max']:.3f} s; busy loaded median {loaded['median']:.3f} s "
        f"max {loaded['max']:.3f} s; busy drain {result['busy_drain_per_s']:.1f}/s "
        f"({args.deliveries} deliveries, {args.answer_seconds} s ± {args.jitter:.0%} answers, "
        f"{args.concurrency} slots)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
