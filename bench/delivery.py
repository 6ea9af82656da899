"""Delivery throughput and idle latency: eventrelay's worker against a bare client loop.

    .venv/bin/python bench/delivery.py [--deliveries 20000] [--backend sqlite|postgres|both]
                                       [--scenario none|key|latency|all] [--rounds 1]
                                       [--concurrency 64] [--profile] [--encryption]
                                       [--baseline-tree DIR] [--json PATH] [--check]

Everything runs on this machine: ``bench/receiver.py`` (a raw asyncio/httptools
receiver in its own process that answers 200 and records each ``webhook-id``
with its arrival time), eventrelay as subprocesses, and the client baselines
inside this process (uvloop).

Drain scenarios (``none``, ``key``), per backend:

1. Preparation, once per scenario: a fresh database (SQLite file in a temporary
   directory, or a PostgreSQL database created on ``--pg-dsn`` and dropped at
   the end), ``eventrelay migrate``, ``eventrelay serve --no-worker``
   (``EVENTRELAY_ALLOW_PRIVATE_TARGETS=true``), one subscription to the receiver
   (``ordering: none``, or ``ordering: key`` with the events spread over 100
   keys; ``max_in_flight`` = ``--concurrency``), then ``--deliveries`` events in
   ``POST /v1/events/batch`` calls of 500 (unique idempotency keys), then
   ``serve`` is stopped and the database is snapshotted.
2. Each round restores the snapshot, runs ``eventrelay migrate`` on the copy,
   resets the receiver, starts a standalone ``eventrelay worker`` and times
   from the receiver's first arrival until the database shows every delivery
   ``succeeded`` (the receiver's own last-arrival rate is reported too). The
   worker is stopped with SIGTERM afterwards.
   ``key`` rounds also check per-key arrival order against delivery order.

Baselines, on the same receiver with the same bodies (same size and shape as
the worker's, a real Standard Webhooks signature computed per request, the same
header set) and the same concurrency: a bare aiohttp loop (configured like
``app/worker/sender.py``), measured before every drain round and once after the
last, so every drain has a baseline on each side; and once per run, for the
record, httpx's ``AsyncClient`` (limits sized to the concurrency) and httpx
over the ``httpx-aiohttp`` transport (if installed: ``.venv/bin/pip install
httpx-aiohttp``); those two stop after ``--baseline-seconds``.

``--encryption`` drains every scenario twice a round, with
``EVENTRELAY_ENCRYPTION_KEYS`` unset and set (in alternating order): the keyed
drain first runs ``eventrelay rotate-encryption-key`` on its restored copy, so
the worker opens an encrypted secret, and the report compares the two.

``--baseline-tree DIR`` drains every scenario twice a round, with ``DIR``'s
code (``PYTHONPATH=DIR``, e.g. ``git archive main | tar -x -C DIR``) and with
this tree's, in alternating order; each code prepares its own snapshot (its
own migrations, so index changes are compared too), and the report compares
the two.

``latency``: ``eventrelay serve`` with its embedded worker on a fresh database,
a default subscription (``ordering: key``), then single ``POST /v1/events``
calls one at a time on a fixed ``--latency-interval-ms`` schedule; for each
event, request start (``time.time()`` here) to receipt (``time.time()`` in the
receiver, same clock).

``--profile`` adds one unmeasured drain per scenario with ``py-spy record``
attached to the worker once it is delivering (``.venv/bin/pip install py-spy``)
and prints its hot spots; the raw profiles are kept in ``--profile-dir``.

Targets: drain/baseline >= 0.5 (``none``) and >= 0.35 (``key``); idle
end-to-end p50 <= 15 ms and p99 <= 50 ms. The machine is shared, so absolute
numbers are noisy; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import platform
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import uvloop
from common import CLK_TCK, free_port, process_cpu_seconds

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent

TARGETS = {"none": 0.5, "key": 0.35}
TARGET_P50_MS = 15.0
TARGET_P99_MS = 50.0
BATCH = 500
KEYS = 100
EVENT_TYPE = "order.created"
USER_AGENT = "eventrelay/0.1.0"
BENCH_SECRET = "whsec_" + base64.b64encode(b"eventrelay-delivery-bench-secret!").decode()
STALL_SECONDS = 60.0


# --------------------------------------------------------------------------- results


@dataclass
class Baseline:
    client: str
    label: str
    requests: int
    seconds: float
    errors: int
    receiver_count: int
    receiver_cpu_s: float
    client_cpu_s: float = 0.0
    note: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Drain:
    backend: str
    scenario: str
    round: int
    deliveries: int
    seconds: float  # first receipt -> database shows all succeeded
    receiver_seconds: float  # first receipt -> last distinct receipt
    startup_s: float  # worker spawn -> first receipt
    received: int
    duplicates: int
    order_violations: int | None
    worker_cpu_s: float
    worker_loop_cpu_s: float
    db_cpu_s: float | None
    receiver_cpu_s: float
    statuses: dict[str, int]
    baseline_rps: float = 0.0
    profiled: bool = False
    encrypted: bool = False  # EVENTRELAY_ENCRYPTION_KEYS set, the secret stored encrypted
    code: str = ""  # "before": --baseline-tree's code; "": this tree's
    error: str = ""

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0

    @property
    def receiver_rate(self) -> float:
        return self.deliveries / self.receiver_seconds if self.receiver_seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.rate / self.baseline_rps if self.baseline_rps else 0.0


@dataclass
class Latency:
    backend: str
    events: int
    interval_ms: float
    ack_ms: list[float]
    e2e_ms: list[float]
    missing: int
    after_ack_ms: list[float] = field(default_factory=list)  # 202 received -> receipt


@dataclass
class Run:
    started_at: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    baselines: list[Baseline] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "httpx": httpx.__version__,
        "loadavg_start": os.getloadavg(),
    }


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process's main thread and of all its other threads together."""
    main = others = 0.0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
            if task.name == str(pid):
                main += seconds
            else:
                others += seconds
    return main, others


# --------------------------------------------------------------------------- payloads


def event_data(i: int, pad: int) -> dict[str, Any]:
    return {
        "order_id": f"ord_{i:08d}",
        "customer": f"customer-{i % KEYS}",
        "total": 42.5 + i % 100,
        "currency": "EUR",
        "items": [{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-2", "qty": 2}],
        "note": "x" * pad,
    }


def webhook_body(event_id: str, i: int, pad: int) -> bytes:
    """The same shape and size as the worker's body (``app/domain/webhook.py``)."""
    head = orjson.dumps(
        {
            "id": event_id,
            "type": EVENT_TYPE,
            "timestamp": "2026-11-26T10:00:00.000000Z",
            "key": f"customer-{i % KEYS}",
            "schema_version": None,
        }
    )
    return head[:-1] + b',"data":' + orjson.dumps(event_data(i, pad)) + b"}"


def signed_headers(key: bytes, event_id: str, body: bytes) -> dict[str, str]:
    """What the worker sends: Standard Webhooks headers, signed now."""
    timestamp = int(time.time())
    signed = b"%s.%d.%s" % (event_id.encode(), timestamp, body)
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + digest,
        "user-agent": USER_AGENT,
    }


# --------------------------------------------------------------------------- receiver


class ReceiverProcess:
    def __init__(self, workdir: Path) -> None:
        self.log_path = workdir / "receiver.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "receiver.py"), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"receiver did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._session: aiohttp.ClientSession | None = None

    async def _get(self, path: str, method: str = "GET") -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.request(method, self.url + path) as answer:
            return orjson.loads(await answer.read())

    async def reset(self, target: int) -> None:
        await self._get(f"/_reset?target={target}", "POST")

    async def stats(self) -> dict[str, Any]:
        found: dict[str, Any] = await self._get("/_stats")
        return found

    async def arrivals(self) -> tuple[list[str], list[float]]:
        found = await self._get("/_arrivals")
        return found["ids"], found["times"]

    def cpu(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        stop_process(self.proc)
        self._log.close()


# --------------------------------------------------------------------------- databases


class Backend:
    """Fresh databases, snapshots and direct counts for one store."""

    name = ""

    async def fresh(self, label: str) -> str:
        raise NotImplementedError

    async def snapshot(self, url: str, label: str) -> str:
        raise NotImplementedError

    async def restore(self, snapshot: str, label: str) -> str:
        raise NotImplementedError

    async def query(self, url: str, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def db_cpu(self, url: str) -> float | None:
        return None

    async def close(self) -> None:
        return None

    async def counts(self, url: str) -> dict[str, int]:
        rows = await self.query(url, "SELECT status, count(*) FROM deliveries GROUP BY status")
        return {str(r[0]): int(r[1]) for r in rows}

    async def delivery_order(self, url: str) -> list[tuple[str, str | None]]:
        rows = await self.query(
            url,
            "SELECT d.event_id, d.ordering_key FROM deliveries d ORDER BY d.seq",
        )
        return [(str(r[0]), r[1]) for r in rows]


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self._dir = workdir
        self._readers: dict[str, sqlite3.Connection] = {}

    @staticmethod
    def path(url: str) -> Path:
        return Path(url.split(":///", 1)[1])

    async def fresh(self, label: str) -> str:
        return f"sqlite+aiosqlite:///{self._dir / f'{label}.db'}"

    async def snapshot(self, url: str, label: str) -> str:
        target = self._dir / f"{label}.snapshot.db"
        with (
            contextlib.closing(sqlite3.connect(self.path(url))) as src,
            contextlib.closing(sqlite3.connect(target)) as dst,
        ):
            src.backup(dst)
        return str(target)

    async def restore(self, snapshot: str, label: str) -> str:
        target = self._dir / f"{label}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        with (
            contextlib.closing(sqlite3.connect(snapshot)) as src,
            contextlib.closing(sqlite3.connect(target)) as dst,
        ):
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")
        return f"sqlite+aiosqlite:///{target}"

    async def query(self, url: str, sql: str) -> list[tuple[Any, ...]]:
        conn = self._readers.get(url)
        if conn is None:
            path = self.path(url)
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            self._readers[url] = conn
        return conn.execute(sql).fetchall()

    async def close(self) -> None:
        for conn in self._readers.values():
            conn.close()
        self._readers.clear()


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, admin_dsn: str) -> None:
        self._admin = admin_dsn
        self._prefix = f"eventrelay_dbench_{os.getpid()}_{secrets.token_hex(2)}"
        self._created: list[str] = []
        self._conns: dict[str, Any] = {}

    def _dbname(self, label: str) -> str:
        return f"{self._prefix}_{re.sub(r'[^a-z0-9_]', '_', label.lower())}"

    def _dsn(self, dbname: str) -> str:
        return re.sub(r"/[^/?]*(\?|$)", f"/{dbname}\\1", self._admin, count=1)

    def _url(self, dbname: str) -> str:
        return "postgresql+asyncpg://" + self._dsn(dbname).split("://", 1)[1]

    @staticmethod
    def _name_of(url: str) -> str:
        return url.rsplit("/", 1)[1].split("?", 1)[0]

    async def _admin_exec(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._admin)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def _create(self, dbname: str, template: str | None = None) -> None:
        await self._drop_conn(dbname)
        clause = f' TEMPLATE "{template}"' if template else ""
        await self._admin_exec(
            f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)',
            f'CREATE DATABASE "{dbname}"{clause}',
        )
        if dbname not in self._created:
            self._created.append(dbname)

    async def fresh(self, label: str) -> str:
        dbname = self._dbname(label)
        await self._create(dbname)
        return self._url(dbname)

    async def snapshot(self, url: str, label: str) -> str:
        dbname = self._dbname(f"{label}_snapshot")
        await self._drop_conn(self._name_of(url))
        await self._create(dbname, template=self._name_of(url))
        return dbname

    async def restore(self, snapshot: str, label: str) -> str:
        dbname = self._dbname(label)
        await self._create(dbname, template=snapshot)
        return self._url(dbname)

    async def _drop_conn(self, dbname: str) -> None:
        conn = self._conns.pop(dbname, None)
        if conn is not None:
            await conn.close()

    async def query(self, url: str, sql: str) -> list[tuple[Any, ...]]:
        import asyncpg

        dbname = self._name_of(url)
        conn = self._conns.get(dbname)
        if conn is None:
            conn = self._conns[dbname] = await asyncpg.connect(self._dsn(dbname))
        return [tuple(r) for r in await conn.fetch(sql)]

    async def db_cpu(self, url: str) -> float | None:
        import asyncpg

        conn = await asyncpg.connect(self._admin)
        try:
            pids = await conn.fetchval(
                "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = $1",
                self._name_of(url),
            )
        finally:
            await conn.close()
        return sum(process_cpu_seconds(p) for p in pids or [])

    async def close(self) -> None:
        for dbname in list(self._conns):
            await self._drop_conn(dbname)
        for dbname in reversed(self._created):
            with contextlib.suppress(Exception):
                await self._admin_exec(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


# --------------------------------------------------------------------------- eventrelay


def eventrelay_env(db_url: str, admin: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTRELAY_")}
    env.update(
        {
            "EVENTRELAY_DATABASE_URL": db_url,
            "EVENTRELAY_ADMIN_TOKEN": admin,
            "EVENTRELAY_ALLOW_PRIVATE_TARGETS": "true",
        }
    )
    env.update(extra or {})
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Eventrelay:
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def migrate(db_url: str, admin: str, workdir: Path, extra: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [str(VENV_BIN / "eventrelay"), "migrate"],
        env=eventrelay_env(db_url, admin, extra),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"eventrelay migrate failed:\n{done.stdout}\n{done.stderr}")


def encrypt_secrets(db_url: str, workdir: Path, keys: dict[str, str]) -> None:
    """``eventrelay rotate-encryption-key`` on a restored copy: its one secret encrypted."""
    done = subprocess.run(
        [str(VENV_BIN / "eventrelay"), "rotate-encryption-key"],
        env=eventrelay_env(db_url, "unused", keys),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.rstrip().endswith("1 rows changed"):
        raise RuntimeError(f"rotate-encryption-key failed:\n{done.stdout}\n{done.stderr}")


def spawn(
    args: list[str],
    db_url: str,
    admin: str,
    workdir: Path,
    name: str,
    extra_env: dict[str, str] | None = None,
) -> Eventrelay:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "eventrelay"), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=eventrelay_env(db_url, admin, extra_env),
        )
    return Eventrelay(proc, log_path)


async def start_serve(
    db_url: str,
    admin: str,
    workdir: Path,
    *,
    worker: bool,
    name: str,
    extra_env: dict[str, str] | None = None,
) -> Eventrelay:
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    command = args if worker else [*args, "--no-worker"]
    server = spawn(command, db_url, admin, workdir, name, extra_env)
    server.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and server.proc.poll() is None:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{server.url}/healthz") as answer:
                    if answer.status == 200:
                        return server
            await asyncio.sleep(0.2)
    stop_process(server.proc)
    raise RuntimeError(f"eventrelay serve did not become healthy:\n{server.tail()}")


@contextlib.asynccontextmanager
async def api(server: Eventrelay, admin: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=server.url, headers={"Authorization": f"Bearer {admin}"}
    ) as session:
        yield session


async def create_subscription(
    session: aiohttp.ClientSession, target: str, body: dict[str, Any]
) -> str:
    document = {"url": target, "secret": BENCH_SECRET, "description": "bench/delivery.py", **body}
    async with session.post("/v1/subscriptions", json=document) as answer:
        text = await answer.text()
        if answer.status != 201:
            raise RuntimeError(f"creating the subscription failed: {answer.status} {text}")
        sub_id: str = orjson.loads(text)["id"]
        return sub_id


async def ingest_all(
    session: aiohttp.ClientSession, n: int, pad: int, prefix: str, parallel: int = 2
) -> None:
    batches = [range(start, min(start + BATCH, n)) for start in range(0, n, BATCH)]
    queue: asyncio.Queue[range] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def post(items: range) -> None:
        document = {
            "events": [
                {
                    "idempotency_key": f"{prefix}-{i}",
                    "type": EVENT_TYPE,
                    "key": f"customer-{i % KEYS}",
                    "data": event_data(i, pad),
                }
                for i in items
            ]
        }
        for _ in range(5):
            async with session.post(
                "/v1/events/batch",
                data=orjson.dumps(document),
                headers={"content-type": "application/json"},
            ) as answer:
                text = await answer.text()
                if answer.status == 200:
                    return
                if answer.status != 503:
                    raise RuntimeError(f"batch ingest failed: {answer.status} {text[:500]}")
            await asyncio.sleep(0.5)
        raise RuntimeError("batch ingest kept failing with 503")

    async def lane() -> None:
        while not queue.empty():
            await post(queue.get_nowait())

    await asyncio.gather(*(lane() for _ in range(parallel)))


# --------------------------------------------------------------------------- baselines


async def closed_loop(
    send: Callable[[int], Awaitable[bool]], n: int, concurrency: int, max_seconds: float
) -> tuple[int, int, float]:
    """``concurrency`` lanes sending requests 0..n-1; stops early after ``max_seconds``."""
    next_index = 0
    done = errors = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def lane() -> None:
        nonlocal next_index, done, errors
        while next_index < n and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            try:
                ok = await send(i)
            except (aiohttp.ClientError, httpx.HTTPError, OSError, TimeoutError):
                ok = False
            done += ok
            errors += not ok

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return done, errors, time.perf_counter() - started


@dataclass
class Payloads:
    ids: list[str]
    bodies: list[bytes]
    key: bytes

    @classmethod
    def build(cls, n: int, pad: int, label: str) -> Payloads:
        ids = [f"evt_{label[:6]}{i:020d}" for i in range(n)]
        return cls(ids, [webhook_body(e, i, pad) for i, e in enumerate(ids)], _secret_key())


def _secret_key() -> bytes:
    return base64.b64decode(BENCH_SECRET.removeprefix("whsec_"))


async def baseline_aiohttp(
    url: str, p: Payloads, concurrency: int, max_seconds: float
) -> tuple[int, int, float]:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=60)
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    ) as session:

        async def send(i: int) -> bool:
            body = p.bodies[i]
            async with session.post(
                url,
                data=body,
                headers=signed_headers(p.key, p.ids[i], body),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=15),
            ) as answer:
                await answer.content.read(4096)
                return answer.status == 200

        return await closed_loop(send, len(p.ids), concurrency, max_seconds)


async def baseline_httpx(
    url: str, p: Payloads, concurrency: int, max_seconds: float, *, transport: str
) -> tuple[int, int, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport == "httpx-aiohttp":
        from httpx_aiohttp import HttpxAiohttpClient

        client: httpx.AsyncClient = HttpxAiohttpClient(limits=limits, timeout=15)
    else:
        client = httpx.AsyncClient(limits=limits, timeout=15)
    async with client:

        async def send(i: int) -> bool:
            body = p.bodies[i]
            answer = await client.post(
                url, content=body, headers=signed_headers(p.key, p.ids[i], body)
            )
            return answer.status_code == 200

        return await closed_loop(send, len(p.ids), concurrency, max_seconds)


async def measure_baseline(
    receiver: ReceiverProcess,
    client: str,
    label: str,
    payloads: Payloads,
    args: argparse.Namespace,
    max_seconds: float = 600.0,
) -> Baseline:
    url = f"{receiver.url}/hook"
    run: Callable[..., Awaitable[tuple[int, int, float]]]
    if client == "aiohttp":
        run = baseline_aiohttp
    else:

        async def run(u: str, p: Payloads, c: int, s: float) -> tuple[int, int, float]:
            return await baseline_httpx(u, p, c, s, transport=client)

    warm = Payloads(payloads.ids[:500], payloads.bodies[:500], payloads.key)
    await run(url, warm, args.concurrency, 5.0)
    await receiver.reset(0)
    cpu, own_cpu = receiver.cpu(), process_cpu_seconds(os.getpid())
    requests, errors, seconds = await run(url, payloads, args.concurrency, max_seconds)
    own_cpu = process_cpu_seconds(os.getpid()) - own_cpu
    stats = await receiver.stats()
    result = Baseline(
        client, label, requests, seconds, errors, stats["count"], receiver.cpu() - cpu, own_cpu
    )
    if requests + errors < len(payloads.ids):
        result.note = f"stopped after {max_seconds:g} s"
    print(f"baseline {client:14} {label:22} {result.rps:8,.0f} req/s", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------- drains


@dataclass
class Prepared:
    backend: Backend
    scenario: str
    snapshot: str
    order: list[tuple[str, str | None]]  # (event id, ordering key) in delivery order
    code: str = ""  # "before": --baseline-tree's code, prepared with its migrations
    env: dict[str, str] = field(default_factory=dict)  # PYTHONPATH for that code


async def prepare(
    backend: Backend,
    scenario: str,
    receiver: ReceiverProcess,
    args: argparse.Namespace,
    code: str = "",
) -> Prepared:
    admin = secrets.token_urlsafe(24)
    env = {"PYTHONPATH": str(args.baseline_tree)} if code == "before" else {}
    label = f"prep_{scenario}{'_before' if code else ''}"
    url = await backend.fresh(label)
    migrate(url, admin, args.workdir, env)
    server = await start_serve(
        url, admin, args.workdir, worker=False, name=label.replace("_", "-"), extra_env=env
    )
    started = time.perf_counter()
    try:
        async with api(server, admin) as session:
            await create_subscription(
                session,
                f"{receiver.url}/hook",
                {
                    "ordering": scenario,
                    "max_in_flight": args.concurrency,
                    "retry_schedule": [0.5, 1, 2],
                },
            )
            await ingest_all(session, args.deliveries, args.pad, f"{args.run_id}-{scenario}{code}")
    finally:
        stop_process(server.proc)
    seconds = time.perf_counter() - started
    counts = await backend.counts(url)
    if counts.get("pending", 0) != args.deliveries:
        raise RuntimeError(f"expected {args.deliveries} pending deliveries, found {counts}")
    order = await backend.delivery_order(url)
    print(
        f"prepared {backend.name}/{scenario}{' ' + code if code else ''}: "
        f"{args.deliveries} deliveries in {seconds:.1f} s "
        f"({args.deliveries / seconds:,.0f} events/s)",
        file=sys.stderr,
        flush=True,
    )
    snapshot = await backend.snapshot(url, label)
    return Prepared(backend, scenario, snapshot, order, code, env)


def order_violations(order: list[tuple[str, str | None]], ids: list[str]) -> int:
    """Deliveries of one key that arrived (first time) before their predecessor's first arrival."""
    first: dict[str, int] = {}
    for position, event_id in enumerate(ids):
        first.setdefault(event_id, position)
    last_by_key: dict[str, int] = {}
    violations = 0
    for event_id, key in order:
        if key is None or event_id not in first:
            continue
        position = first[event_id]
        if position < last_by_key.get(key, -1):
            violations += 1
        last_by_key[key] = max(position, last_by_key.get(key, -1))
    return violations


class Profiler:
    def __init__(self, pid: int, out: Path, *, native: bool = False) -> None:
        py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "400",
                *([] if native else ["--nonblocking"]),  # py-spy: --native needs pauses
                "--threads",
                "--function",
                "--format",
                "raw",
                "--output",
                str(out),
                *(["--native"] if native else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def finish(self) -> str | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        if not self.out.exists():
            print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
            return None
        return str(self.out)


async def wait_received(
    receiver: ReceiverProcess, worker: Eventrelay, n: int
) -> tuple[dict[str, Any], tuple[float, float] | None, float]:
    """Poll the receiver until ``n`` distinct deliveries arrived; return its stats, the
    worker's CPU seconds when the first arrived, and the wall time of that first poll."""
    cpu_at_first: tuple[float, float] | None = None
    progress, progress_at = -1, time.monotonic()
    while True:
        stats = await receiver.stats()
        if cpu_at_first is None and stats["count"] > 0:
            cpu_at_first = thread_cpu_seconds(worker.proc.pid)
        if stats["unique"] >= n:
            return stats, cpu_at_first, time.time()
        if stats["unique"] != progress:
            progress, progress_at = stats["unique"], time.monotonic()
        elif time.monotonic() - progress_at > STALL_SECONDS:
            raise RuntimeError(
                f"no progress for {STALL_SECONDS:g} s at {progress}/{n}; worker log:\n"
                f"{worker.tail()}"
            )
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{worker.tail()}")
        await asyncio.sleep(0.02)


async def wait_succeeded(backend: Backend, url: str, n: int) -> tuple[float, dict[str, int]]:
    deadline = time.monotonic() + STALL_SECONDS
    while True:
        counts = await backend.counts(url)
        now = time.time()
        if counts.get("succeeded", 0) >= n or time.monotonic() > deadline:
            return now, counts
        await asyncio.sleep(0.01)


async def drain(
    prepared: Prepared,
    receiver: ReceiverProcess,
    args: argparse.Namespace,
    number: int,
    *,
    profile: bool = False,
    encrypted: bool = False,
) -> Drain:
    backend, n = prepared.backend, args.deliveries
    label = (
        f"run_{prepared.scenario}_{number}{'p' if profile else ''}{'e' if encrypted else ''}"
        f"{'b' if prepared.code else ''}"
    )
    url = await backend.restore(prepared.snapshot, label)
    # The checkout may have gained a migration since the snapshot (others work here too);
    # a worker waits for `migrate` rather than running it.
    migrate(url, "unused", args.workdir, prepared.env)
    keys = {"EVENTRELAY_ENCRYPTION_KEYS": args.encryption_key} if encrypted else None
    if keys is not None:
        encrypt_secrets(url, args.workdir, keys)
    env = {**prepared.env, **(keys or {})}
    await receiver.reset(n)
    receiver_cpu = receiver.cpu()
    spawned = time.time()
    worker = spawn(["worker"], url, "unused", args.workdir, f"worker-{backend.name}-{label}", env)
    profiler: Profiler | None = None
    result = Drain(
        backend.name, prepared.scenario, number, n, 0, 0, 0, 0, 0, None, 0, 0, None, 0, {}
    )
    result.profiled = profile
    result.encrypted = encrypted
    result.code = prepared.code
    try:
        if profile:
            while (await receiver.stats())["count"] == 0 and worker.proc.poll() is None:
                await asyncio.sleep(0.01)
            out = Path(args.profile_dir) / f"delivery-{backend.name}-{label}-{args.run_id}.txt"
            profiler = Profiler(worker.proc.pid, out, native=args.profile_native)
        db_cpu = await backend.db_cpu(url)
        stats, cpu_first, _ = await wait_received(receiver, worker, n)
        done_at, counts = await wait_succeeded(backend, url, n)
        loop_end, threads_end = thread_cpu_seconds(worker.proc.pid)
        loop_first, threads_first = cpu_first or (0.0, 0.0)
        db_cpu_end = await backend.db_cpu(url)
    finally:
        if profiler is not None:
            path = profiler.finish()
            if path:
                args.run.profiles[f"{backend.name}/{prepared.scenario}"] = path
        stop_process(worker.proc)
    ids, _ = await receiver.arrivals()
    result.seconds = done_at - stats["first"]
    result.receiver_seconds = stats["target_at"] - stats["first"]
    result.startup_s = stats["first"] - spawned
    result.received = stats["count"]
    result.duplicates = stats["count"] - stats["unique"]
    result.worker_loop_cpu_s = loop_end - loop_first
    result.worker_cpu_s = result.worker_loop_cpu_s + threads_end - threads_first
    result.db_cpu_s = None if db_cpu is None or db_cpu_end is None else db_cpu_end - db_cpu
    result.receiver_cpu_s = receiver.cpu() - receiver_cpu
    result.statuses = counts
    if counts.get("succeeded", 0) < n:
        result.error = f"only {counts} after the receiver got all"
    if prepared.scenario == "key":
        result.order_violations = order_violations(prepared.order, ids)
    print(
        f"drain {backend.name:8} {prepared.scenario:4} round {number}"
        f"{' (py-spy)' if profile else ''}{' encrypted' if encrypted else ''}"
        f"{' ' + prepared.code if prepared.code else ''}: "
        f"{result.rate:8,.0f} deliveries/s "
        f"({result.seconds:.2f} s; receiver {result.receiver_rate:,.0f}/s; "
        f"worker CPU {1e6 * result.worker_cpu_s / n:,.0f} µs/delivery)",
        file=sys.stderr,
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- latency


async def measure_latency(
    backend: Backend, receiver: ReceiverProcess, args: argparse.Namespace
) -> Latency:
    admin = secrets.token_urlsafe(24)
    url = await backend.fresh("latency")
    migrate(url, admin, args.workdir)
    server = await start_serve(url, admin, args.workdir, worker=True, name="latency")
    interval = args.latency_interval_ms / 1000
    try:
        async with api(server, admin) as session:
            await create_subscription(session, f"{receiver.url}/hook", {})
            await _latency_events(session, receiver, args, 20, interval, "warm")
            acks, starts, ids = await _latency_events(
                session, receiver, args, args.latency_events, interval, "lat"
            )
            arrivals = await _await_arrivals(receiver, set(ids))
    finally:
        stop_process(server.proc)
    e2e = [1000 * (arrivals[i] - s) for i, s in zip(ids, starts, strict=True) if i in arrivals]
    after_ack = [
        1000 * (arrivals[i] - s) - a
        for i, s, a in zip(ids, starts, acks, strict=True)
        if i in arrivals
    ]
    result = Latency(
        backend.name, len(ids), args.latency_interval_ms, acks, e2e, len(ids) - len(e2e), after_ack
    )
    print(
        f"latency {backend.name:8}: e2e p50 {percentile(e2e, 50):.1f} ms, "
        f"p99 {percentile(e2e, 99):.1f} ms; ingest ack p50 {percentile(acks, 50):.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    return result


async def _latency_events(
    session: aiohttp.ClientSession,
    receiver: ReceiverProcess,
    args: argparse.Namespace,
    count: int,
    interval: float,
    tag: str,
) -> tuple[list[float], list[float], list[str]]:
    await receiver.reset(0)
    acks: list[float] = []
    starts: list[float] = []
    ids: list[str] = []
    t0 = time.perf_counter()
    for i in range(count):
        delay = t0 + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        body = orjson.dumps(
            {"type": EVENT_TYPE, "key": f"customer-{i % KEYS}", "data": event_data(i, args.pad)}
        )
        headers = {
            "content-type": "application/json",
            "Idempotency-Key": f"{args.run_id}-{tag}-{i}",
        }
        started = time.time()
        async with session.post("/v1/events", data=body, headers=headers) as answer:
            text = await answer.read()
            acked = time.time()
            if answer.status != 202:
                raise RuntimeError(f"ingest failed: {answer.status} {text[:300]!r}")
        starts.append(started)
        acks.append(1000 * (acked - started))
        ids.append(orjson.loads(text)["id"])
    await _await_arrivals(receiver, set(ids))
    return acks, starts, ids


async def _await_arrivals(receiver: ReceiverProcess, wanted: set[str]) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while True:
        ids, times = await receiver.arrivals()
        first: dict[str, float] = {}
        for i, t in zip(ids, times, strict=True):
            first.setdefault(i, t)
        if wanted <= first.keys() or time.monotonic() > deadline:
            return first
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- profiles


_AREAS = (
    ("app/worker/", "eventrelay worker (app/worker)"),
    ("app/store/", "eventrelay store (app/store)"),
    ("app/domain/", "eventrelay domain (signing, body, retry)"),
    ("app/services/", "eventrelay services (group commit)"),
    ("app/metrics", "eventrelay metrics"),
    ("prometheus_client/", "prometheus client"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "yarl"),
    ("multidict/", "multidict"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("asyncpg/", "asyncpg"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio"),
)


@dataclass
class Profile:
    total: int
    threads: Counter[str]
    areas: Counter[str]
    app_inclusive: Counter[str]
    self_samples: Counter[str]


def _thread_kind(stack: list[str]) -> str:
    """The thread a ``py-spy --threads`` stack belongs to, by its name."""
    name = next((f.split("): ", 1)[-1] for f in stack if f.startswith("thread (")), "")
    if name == "MainThread":
        return "event loop thread"
    if "_connection_worker_thread" in name:
        return "aiosqlite threads (SQLite calls)"
    return f"other threads ({name})" if name else "unknown thread"


def summarise_profile(path: Path) -> Profile:
    prof = Profile(0, Counter(), Counter(), Counter(), Counter())
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = stack.split(";")
        frames = [f for f in raw if f and not f.startswith(("thread (", "process "))]
        if any("_find_and_load" in f for f in frames):
            continue  # imports, not delivery
        prof.total += count
        prof.threads[_thread_kind(raw)] += count
        prof.self_samples[frames[-1] if frames else "?"] += count
        prof.areas[_area(frames)] += count
        for frame in dict.fromkeys(f for f in frames if "app/" in f and "app/cli" not in f):
            prof.app_inclusive[frame] += count
    return prof


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for marker, name in _AREAS:
            if marker in frame:
                return name
    return "other (interpreter, C extensions, uvloop)"


def render_profile(prof: Profile, top: int = 15) -> str:
    def pct(n: int) -> str:
        return f"{100 * n / max(prof.total, 1):.1f} %"

    lines = [f"{prof.total} samples (imports excluded)\n", "| thread | samples |", "| --- | ---: |"]
    lines += [f"| {name} | {pct(n)} |" for name, n in prof.threads.most_common()]
    lines += ["", "| where (innermost known frame) | samples |", "| --- | ---: |"]
    lines += [f"| {name} | {pct(n)} |" for name, n in prof.areas.most_common()]
    lines += ["", "| app function (inclusive) | samples |", "| --- | ---: |"]
    lines += [f"| `{name}` | {pct(n)} |" for name, n in prof.app_inclusive.most_common(top)]
    lines += ["", "| leaf function (self) | samples |", "| --- | ---: |"]
    lines += [f"| `{name}` | {pct(n)} |" for name, n in prof.self_samples.most_common(top)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def baseline_table(run: Run) -> str:
    aio = [b.rps for b in run.baselines if b.client == "aiohttp"]
    ref = statistics.median(aio) if aio else 0.0
    lines = [
        "| client | when | requests | errors | seconds | req/s | vs aiohttp (median) "
        "| client CPU µs/req | receiver CPU µs/req | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for b in run.baselines:
        ratio = f"{b.rps / ref:.2f}" if ref else "-"
        lines.append(
            f"| {b.client} | {b.label} | {b.requests} | {b.errors} | {b.seconds:.2f} "
            f"| {b.rps:,.0f} | {ratio} | {1e6 * b.client_cpu_s / max(b.requests, 1):,.0f} "
            f"| {1e6 * b.receiver_cpu_s / max(b.requests, 1):,.0f} | {b.note} |"
        )
    return "\n".join(lines)


def drain_verdict(d: Drain) -> str:
    problems = []
    target = TARGETS[d.scenario]
    if d.ratio < target:
        problems.append(f"ratio < {target}")
    if d.error:
        problems.append(d.error)
    if d.order_violations:
        problems.append(f"{d.order_violations} out of order")
    return "met" if not problems else "; ".join(problems)


def drain_table(run: Run) -> str:
    lines = [
        "| backend | ordering | round | deliveries | drain s | deliveries/s | aiohttp baseline "
        "req/s | ratio | target | verdict | receiver-side deliveries/s | worker start s "
        "| worker CPU µs/delivery (event loop thread) | DB CPU µs/delivery | duplicates "
        "| order violations |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: "
        "| ---: | ---: | ---: |",
    ]
    for d in run.drains:
        db_cpu = "-" if d.db_cpu_s is None else f"{1e6 * d.db_cpu_s / d.deliveries:,.0f}"
        order = "-" if d.order_violations is None else str(d.order_violations)
        label = f"{d.round} (py-spy, unmeasured)" if d.profiled else str(d.round)
        label += ", encrypted" if d.encrypted else ""
        label += f", {d.code}" if d.code else ""
        ratio = f"**{d.ratio:.2f}**" if not d.profiled else f"({d.ratio:.2f})"
        verdict = drain_verdict(d) if not d.profiled else "-"
        lines.append(
            f"| {d.backend} | {d.scenario} | {label} | {d.deliveries} | {d.seconds:.2f} "
            f"| {d.rate:,.0f} | {d.baseline_rps:,.0f} | {ratio} | ≥ {TARGETS[d.scenario]} "
            f"| {verdict} | {d.receiver_rate:,.0f} | {d.startup_s:.2f} "
            f"| {1e6 * d.worker_cpu_s / d.deliveries:,.0f} "
            f"({1e6 * d.worker_loop_cpu_s / d.deliveries:,.0f}) | {db_cpu} | {d.duplicates} "
            f"| {order} |"
        )
    return "\n".join(lines)


def paired_drains(
    run: Run, keep: Callable[[Drain], bool], second: Callable[[Drain], bool]
) -> Iterator[tuple[str, str, list[Drain], list[Drain]]]:
    """The measured drains ``keep`` accepts, per backend and scenario, split in two
    by ``second`` (a group without both sides is left out)."""
    groups: dict[tuple[str, str], list[Drain]] = {}
    for d in run.drains:
        if not d.profiled and keep(d):
            groups.setdefault((d.backend, d.scenario), []).append(d)
    for (backend, scenario), drains in groups.items():
        first = [d for d in drains if not second(d)]
        other = [d for d in drains if second(d)]
        if first and other:
            yield backend, scenario, first, other


def encryption_table(run: Run) -> str:
    """Drains with EVENTRELAY_ENCRYPTION_KEYS set against the same drains without."""
    lines = [
        "| backend | ordering | drains each | keys unset deliveries/s | keys set deliveries/s "
        "| set / unset | worker CPU µs/delivery unset → set |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    pairs = paired_drains(run, lambda d: True, lambda d: d.encrypted)
    for backend, scenario, plain, sealed in pairs:
        rate_plain = statistics.mean(d.rate for d in plain)
        rate_sealed = statistics.mean(d.rate for d in sealed)
        cpu_plain = statistics.mean(1e6 * d.worker_cpu_s / d.deliveries for d in plain)
        cpu_sealed = statistics.mean(1e6 * d.worker_cpu_s / d.deliveries for d in sealed)
        lines.append(
            f"| {backend} | {scenario} | {len(plain)} | {rate_plain:,.0f} | {rate_sealed:,.0f} "
            f"| **{rate_sealed / rate_plain:.2f}** | {cpu_plain:,.0f} → {cpu_sealed:,.0f} |"
        )
    return "\n".join(lines)


def code_table(run: Run) -> str:
    """Drains of this tree's code against the same drains of --baseline-tree's."""
    lines = [
        "| backend | ordering | drains each | ratio per round, before → this tree "
        "| mean ratio before → this tree | worker CPU µs/delivery | DB CPU µs/delivery |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]

    def per_delivery(drains: list[Drain], seconds: Callable[[Drain], float | None]) -> str:
        values = [seconds(d) for d in drains]
        known = [1e6 * v / d.deliveries for v, d in zip(values, drains, strict=True) if v]
        return f"{statistics.mean(known):,.0f}" if known else "-"

    pairs = paired_drains(run, lambda d: not d.encrypted, lambda d: d.code != "before")
    for backend, scenario, before, after in pairs:
        rounds = ", ".join(
            f"{b.ratio:.2f} → {a.ratio:.2f}" for b, a in zip(before, after, strict=False)
        )
        mean_before = statistics.mean(d.ratio for d in before)
        mean_after = statistics.mean(d.ratio for d in after)
        lines.append(
            f"| {backend} | {scenario} | {len(after)} | {rounds} "
            f"| {mean_before:.2f} → **{mean_after:.2f}** "
            f"| {per_delivery(before, lambda d: d.worker_cpu_s)} → "
            f"{per_delivery(after, lambda d: d.worker_cpu_s)} "
            f"| {per_delivery(before, lambda d: d.db_cpu_s)} → "
            f"{per_delivery(after, lambda d: d.db_cpu_s)} |"
        )
    return "\n".join(lines)


def latency_table(run: Run) -> str:
    lines = [
        "| backend | events | spacing ms | ingest ack p50 / p99 ms | ack → receipt p50 / p99 ms "
        "| end-to-end p50 ms | p90 ms | p99 ms | max ms | missing | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for lat in run.latencies:
        p50, p99 = percentile(lat.e2e_ms, 50), percentile(lat.e2e_ms, 99)
        problems = []
        if p50 > TARGET_P50_MS:
            problems.append(f"p50 > {TARGET_P50_MS:g}")
        if p99 > TARGET_P99_MS:
            problems.append(f"p99 > {TARGET_P99_MS:g}")
        if lat.missing:
            problems.append(f"{lat.missing} never arrived")
        lines.append(
            f"| {lat.backend} | {lat.events} | {lat.interval_ms:g} "
            f"| {percentile(lat.ack_ms, 50):.1f} / {percentile(lat.ack_ms, 99):.1f} "
            f"| {percentile(lat.after_ack_ms, 50):.1f} / {percentile(lat.after_ack_ms, 99):.1f} "
            f"| **{p50:.1f}** | {percentile(lat.e2e_ms, 90):.1f} | **{p99:.1f}** "
            f"| {max(lat.e2e_ms, default=float('nan')):.1f} | {lat.missing} "
            f"| {'met' if not problems else '; '.join(problems)} |"
        )
    return "\n".join(lines)


def report(run: Run, args: argparse.Namespace) -> bool:
    m = run.machine
    print(f"## Delivery benchmark {run.started_at}\n")
    print(
        f"{m['nproc']} CPUs ({m['cpu_model']}), load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])}; Python {m['python']}, "
        f"aiohttp {m['aiohttp']}, httpx {m['httpx']}. {args.deliveries} deliveries per drain, "
        f"concurrency {args.concurrency} (baseline connections = the subscription's "
        f"max_in_flight), bodies of {args.body_bytes} bytes, standalone `eventrelay worker`, "
        "receiver, worker, database and clients all on the same CPUs. Ratios compare each "
        "drain with the mean of the aiohttp baselines measured just before and after it.\n"
    )
    ok = True
    if run.drains:
        print("### Drain throughput\n")
        print(drain_table(run))
        ok = all(drain_verdict(d) == "met" for d in run.drains if not d.profiled)
        if any(d.encrypted for d in run.drains):
            print("\n### Secrets encrypted at rest against stored as they are\n")
            print(encryption_table(run))
        if any(d.code for d in run.drains):
            print("\n### This tree's code against --baseline-tree's\n")
            print(code_table(run))
    if run.baselines:
        print("\n### Client baselines (same receiver, bodies, headers and concurrency)\n")
        print(baseline_table(run))
    if run.latencies:
        print("\n### Idle end-to-end latency (`eventrelay serve`, embedded worker)\n")
        print(latency_table(run))
        ok = ok and all(
            percentile(lat.e2e_ms, 50) <= TARGET_P50_MS
            and percentile(lat.e2e_ms, 99) <= TARGET_P99_MS
            and not lat.missing
            for lat in run.latencies
        )
    for name, path in run.profiles.items():
        print(f"\n### Worker profile: {name} ({path})\n")
        print(render_profile(summarise_profile(Path(path))))
    return ok


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--scenario", choices=("none", "key", "latency", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=1, help="measured drains per scenario")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pad", type=int, default=200, help="filler bytes in each event's data")
    parser.add_argument(
        "--baseline-seconds", type=float, default=10.0, help="cap for the httpx baselines"
    )
    parser.add_argument("--no-httpx", action="store_true", help="skip the httpx baselines")
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--latency-interval-ms", type=float, default=20.0)
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a database to connect to for CREATE/DROP DATABASE",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add one unmeasured drain per scenario with py-spy attached",
    )
    parser.add_argument("--profile-dir", default=tempfile.gettempdir())
    parser.add_argument(
        "--profile-native", action="store_true", help="py-spy --native (C frames too)"
    )
    parser.add_argument(
        "--encryption",
        action="store_true",
        help="drain each scenario with EVENTRELAY_ENCRYPTION_KEYS unset and set, in turn",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also drain with this directory's code (PYTHONPATH), alternating with this tree's",
    )
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    args.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.encryption_key = base64.b64encode(secrets.token_bytes(32)).decode()
    args.body_bytes = len(webhook_body("evt_" + "0" * 26, 0, args.pad))
    return args


async def run_backend(
    backend: Backend,
    receiver: ReceiverProcess,
    payloads: Payloads,
    args: argparse.Namespace,
) -> None:
    run: Run = args.run
    scenarios = ("none", "key") if args.scenario == "all" else (args.scenario,)
    codes = ("before", "") if args.baseline_tree else ("",)
    prepared = [
        await prepare(backend, s, receiver, args, code)
        for s in scenarios
        if s in ("none", "key")
        for code in codes
    ]
    drains: list[Drain] = []
    for number in range(1, args.rounds + 1):
        # With --encryption each scenario drains with the keys unset and set, and with
        # --baseline-tree with the code before and this tree's, the order alternating
        # by round so that drift on a shared machine cancels out.
        modes = (False, True) if args.encryption else (False,)
        order = prepared
        if number % 2 == 0:
            modes = modes[::-1]
            order = [p for s in scenarios for p in reversed(prepared) if p.scenario == s]
        for p, encrypted in ((p, e) for p in order for e in modes):
            what = (
                f"{backend.name}/{p.scenario}{' encrypted' if encrypted else ''}"
                f"{' ' + p.code if p.code else ''} {number}"
            )
            before = await measure_baseline(receiver, "aiohttp", f"before {what}", payloads, args)
            run.baselines.append(before)
            result = await drain(p, receiver, args, number, encrypted=encrypted)
            result.baseline_rps = before.rps  # refined below with the next baseline
            run.drains.append(result)
            drains.append(result)
    if prepared:
        after = await measure_baseline(receiver, "aiohttp", f"after {backend.name}", payloads, args)
        run.baselines.append(after)
        aio = [b for b in run.baselines if b.client == "aiohttp"]
        pairs = aio[-len(drains) - 1 :]
        for d, (b1, b2) in zip(drains, zip(pairs, pairs[1:], strict=False), strict=True):
            d.baseline_rps = (b1.rps + b2.rps) / 2
    if args.profile:
        for p in (p for p in prepared if not p.code):
            profiled = await drain(p, receiver, args, 0, profile=True)
            profiled.baseline_rps = drains[-1].baseline_rps if drains else 0.0
            run.drains.append(profiled)
    if args.scenario in ("latency", "all"):
        run.latencies.append(await measure_latency(backend, receiver, args))


async def main_async(args: argparse.Namespace) -> bool:
    run = Run(
        started_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        machine=machine_info(),
        settings={
            k: getattr(args, k)
            for k in (
                "deliveries",
                "backend",
                "scenario",
                "rounds",
                "concurrency",
                "body_bytes",
                "encryption",
            )
        },
    )
    args.run = run
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="eventrelay-dbench-") as tmp:
        args.workdir = Path(tmp)
        receiver = ReceiverProcess(args.workdir)
        try:
            payloads = Payloads.build(args.deliveries, args.pad, "bench")
            if not args.no_httpx and args.scenario != "latency":
                for client in ("httpx", "httpx-aiohttp"):
                    try:
                        found = await measure_baseline(
                            receiver, client, "once", payloads, args, args.baseline_seconds
                        )
                    except ImportError:
                        found = Baseline(client, "once", 0, 0, 0, 0, 0, note="not installed")
                    run.baselines.append(found)
            for name in backends:
                backend: Backend = (
                    SqliteBackend(args.workdir)
                    if name == "sqlite"
                    else PostgresBackend(args.pg_dsn)
                )
                try:
                    await run_backend(backend, receiver, payloads, args)
                finally:
                    await backend.close()
        finally:
            await receiver.close()
    run.machine["loadavg_end"] = os.getloadavg()
    ok = report(run, args)
    if args.json:
        document = asdict(run)
        Path(args.json).write_text(json.dumps(document, indent=2, default=str))
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok = uvloop.run(main_async(args))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
