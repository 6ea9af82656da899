"""Ingest throughput: eventrelay against a bare FastAPI endpoint, interleaved.

    .venv/bin/python bench/ingest.py [--duration 10] [--rounds 3] [--connections 64]
                                     [--threads 2] [--backend sqlite|postgres|both]
                                     [--subscriptions 0] [--variant NAME=PATCH,...]
                                     [--schemas] [--filters] [--profile] [--check]

It starts, once per run:

* ``bench/bare_app.py`` - FastAPI on the same uvicorn settings as eventrelay
  (uvloop, httptools, one process, no access log) that parses the body with
  orjson and answers 202: the ceiling for this machine and this client;
* ``eventrelay serve --no-worker`` on a fresh SQLite file in a temporary
  directory, and/or on a fresh PostgreSQL database created on
  ``--pg-dsn`` for the run and dropped afterwards;
* per ``--variant``, eventrelay on SQLite with run-time patches from
  ``bench/patched_serve.py`` (to price a proposed change end to end).

Then it runs ``wrk`` (``bench/ingest.lua``: ``POST /v1/events``, a unique
``Idempotency-Key`` per request, an ingest-scope token) against each in turn,
round after round (bare, sqlite, postgres, bare, ...), and reports medians.
Absolute numbers depend on the machine and whatever else runs on it; the
eventrelay/bare ratio, measured seconds apart in the same run, is the figure
to compare across runs. The server's own CPU time per request (from
/proc/<pid>/stat) is reported too: it moves much less with the machine's
load, and bare's CPU/request divided by eventrelay's ("CPU-cost ratio") is
what the throughput ratio tends to when the server, not wrk, is the limit.

After every eventrelay round it waits for the store to settle and checks that
every 2xx wrk counted is stored: ``stored >= 2xx`` (nothing acknowledged was
lost) and ``stored - 2xx <= connections`` (only requests still in flight when
wrk stopped may be stored without being counted). At the end it counts the
events table directly (sqlite3 / asyncpg) against the run's total.

``--profile`` adds one unmeasured round per eventrelay server with
``py-spy record --gil`` attached and prints its hot spots
(``bench/pyspy_top.py``); install it with ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import free_port, pg_execute, process_cpu_seconds
from pyspy_top import render, summarise

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
LUA = BENCH / "ingest.lua"
RESULTS = BENCH / "results"

TARGET_RATIO = 0.5
TARGET_P99_MS = 25.0


@dataclass
class Server:
    name: str  # "bare", "sqlite", "postgres"
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    admin_token: str = ""
    ingest_token: str = ""
    db_url: str = ""
    sqlite_path: Path | None = None
    pg_dbname: str = ""

    @property
    def is_eventrelay(self) -> bool:
        return self.name != "bare"


@dataclass
class Round:
    target: str
    round: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: dict[str, int]
    ok: int  # 2xx answers wrk counted
    server_cpu_s: float
    db_cpu_s: float | None = None
    stored: int | None = None  # events added to the store during the round
    commits: int | None = None  # group-commit flushes during the round
    pg_sessions: int | None = None  # PostgreSQL connections opened during the round
    first_bad: str = ""
    warmup: bool = False  # warm-up and profiling rounds: checked, not in the medians
    label: str = ""

    @property
    def cpu_us_per_req(self) -> float:
        return 1e6 * self.server_cpu_s / max(self.ok, 1)

    @property
    def stored_ok(self) -> bool | None:
        if self.stored is None:
            return None
        return self.stored >= self.ok


@dataclass
class Run:
    started_at: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    rounds: list[Round] = field(default_factory=list)
    final_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    profiles: dict[str, str] = field(default_factory=dict)
    counters: dict[str, dict[str, float]] = field(default_factory=dict)


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "app"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": f"{head}{' + uncommitted changes in app/' if dirty else ''}",
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "",
        "loadavg_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------- servers


def wait_healthy(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    tail = server.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{server.name} did not become healthy; log tail:\n{tail}")


def start_bare(workdir: Path) -> Server:
    port = free_port()
    log_path = workdir / "bare.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "bare_app.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    server = Server("bare", f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_healthy(server)
    except BaseException:
        stop(server)
        raise
    return server


def start_eventrelay(
    name: str,
    db_url: str,
    workdir: Path,
    patches: str = "",
    subscriptions: int = 0,
    schemas: bool = False,
    filtered: bool = False,
) -> Server:
    port = free_port()
    admin = secrets.token_urlsafe(24)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EVENTRELAY_")},
        "EVENTRELAY_DATABASE_URL": db_url,
        "EVENTRELAY_ADMIN_TOKEN": admin,
        # --subscriptions point at a loopback port nobody delivers to (--no-worker).
        "EVENTRELAY_ALLOW_PRIVATE_TARGETS": "true",
    }
    log_path = workdir / f"eventrelay-{name}.log"
    command = [str(VENV_BIN / "eventrelay"), "serve", "--no-worker"]
    if patches:  # an experiment: see bench/patched_serve.py
        command = [sys.executable, str(BENCH / "patched_serve.py"), "--patches", patches]
        command += ["serve", "--no-worker"]
        env["BENCH_COUNTS_FILE"] = str(workdir / f"counts-{name}.json")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    server = Server(name, f"http://127.0.0.1:{port}", proc, log_path, admin, db_url=db_url)
    try:
        prepare(server, subscriptions, schemas, filtered)
    except BaseException:
        stop(server)  # the caller never got hold of it
        raise
    return server


# A schema for each of bench/ingest.lua's event types that its events satisfy.
EVENT_SCHEMA = {
    "type": "object",
    "required": ["order_id", "total", "currency", "items", "customer"],
    "properties": {
        "order_id": {"type": "string", "minLength": 1},
        "total": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer", "minimum": 1},
                },
            },
        },
        "customer": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer"}, "tier": {"type": "string"}},
        },
    },
}
LUA_EVENT_TYPES = ("order.created", "order.paid", "order.shipped", "customer.updated")


def register_schemas(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    for name in LUA_EVENT_TYPES:
        httpx.post(
            f"{server.url}/v1/event-types", json={"name": name}, headers=headers, timeout=10
        ).raise_for_status()
        httpx.post(
            f"{server.url}/v1/event-types/{name}/schemas",
            json={"schema": EVENT_SCHEMA},
            headers=headers,
            timeout=10,
        ).raise_for_status()


def bench_filter(number: int) -> dict[str, Any]:
    """Three conditions every event of bench/ingest.lua meets, different for each
    subscription (each is compiled and matched on its own): a filtered run makes
    the same deliveries as an unfiltered one, so the difference is the filters' cost."""
    return {
        "key": {"$startsWith": "customer-"},
        "data": {"total": {"$gte": -number}, "currency": {"$in": ["EUR", "USD", f"X{number}"]}},
    }


def prepare(
    server: Server, subscriptions: int, schemas: bool = False, filtered: bool = False
) -> None:
    """Wait for health, create the ingest token wrk uses, the subscriptions and schemas."""
    wait_healthy(server)
    admin = server.admin_token
    # wrk authenticates like a producer would: with an ingest-scope token.
    answer = httpx.post(
        f"{server.url}/v1/tokens",
        json={"scope": "ingest", "description": "bench/ingest.py"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    answer.raise_for_status()
    server.ingest_token = answer.json()["token"]
    for number in range(subscriptions):
        created = httpx.post(
            f"{server.url}/v1/subscriptions",
            json={"url": f"http://127.0.0.1:9/hooks/{number}", "event_types": ["*"]}
            | ({"filter": bench_filter(number)} if filtered else {}),
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        created.raise_for_status()
    if schemas:
        register_schemas(server)


def stop(server: Server) -> None:
    if server.proc.poll() is not None:
        return
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


# --------------------------------------------------------------------------- postgres


async def _pg_scalar(dsn: str, query: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def _dsn_for(dsn: str, dbname: str) -> str:
    return re.sub(r"/[^/?]*(\?|$)", f"/{dbname}\\1", dsn.split("://", 1)[1], count=1)


@contextlib.contextmanager
def fresh_pg_database(admin_dsn: str) -> Iterator[tuple[str, str]]:
    """Yield (sqlalchemy url, database name) of a database that exists for the run."""
    dbname = f"eventrelay_bench_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(pg_execute(admin_dsn, f'CREATE DATABASE "{dbname}"'))
    try:
        yield f"postgresql+asyncpg://{_dsn_for(admin_dsn, dbname)}", dbname
    finally:
        asyncio.run(pg_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


def pg_sessions(admin_dsn: str, dbname: str) -> int:
    """Sessions ever established to the database (pg_stat_database.sessions, PostgreSQL 14+)."""
    query = f"SELECT sessions FROM pg_stat_database WHERE datname = '{dbname}'"
    return int(asyncio.run(_pg_scalar(admin_dsn, query)) or 0)


def pg_backend_pids(admin_dsn: str, dbname: str) -> list[int]:
    query = f"SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
    pids = asyncio.run(_pg_scalar(admin_dsn, query))
    return list(pids or [])


# --------------------------------------------------------------------------- eventrelay state


def stored_events(server: Server) -> int:
    answer = httpx.get(
        f"{server.url}/v1/stats",
        headers={"Authorization": f"Bearer {server.admin_token}"},
        timeout=30,
    )
    answer.raise_for_status()
    count: int = answer.json()["events"]
    return count


def settled_events(server: Server, timeout: float = 15.0) -> int:
    """The event count once it stops moving (requests in flight have finished)."""
    last = stored_events(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = stored_events(server)
        if now == last:
            return now
        last = now
    return last


_COMMITS = re.compile(r"^eventrelay_group_commit_batch_size_count(?:\{[^}]*\})? (\S+)$", re.M)


def group_commits(server: Server) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = _COMMITS.search(text)
    return int(float(found.group(1))) if found else 0


# --------------------------------------------------------------------------- wrk


def run_wrk(
    server: Server, args: argparse.Namespace, duration: float, prefix: str
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"{server.url}/v1/events",
        "--",
        prefix,
        server.ingest_token or "bare",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            parsed["raw"] = done.stdout
            return parsed
    raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def measure(
    server: Server,
    args: argparse.Namespace,
    number: int,
    *,
    duration: float,
    warmup: bool = False,
    pg: tuple[str, str] | None = None,
) -> Round:
    # Unique per round: a key reused with another body would be a 422.
    prefix = f"{args.run_id}-{server.name}-{number}{'w' if warmup else ''}-{secrets.token_hex(2)}"
    before_events = settled_events(server) if server.is_eventrelay else None
    before_commits = group_commits(server) if server.is_eventrelay else None
    db_cpu_before = {p: process_cpu_seconds(p) for p in pg_backend_pids(*pg)} if pg else {}
    sessions_before = pg_sessions(*pg) if pg else 0
    cpu_before = process_cpu_seconds(server.proc.pid)
    wrk = run_wrk(server, args, duration, prefix)
    cpu = process_cpu_seconds(server.proc.pid) - cpu_before
    db_cpu = None
    if pg:
        # Backends that exit during the round take their CPU time with them.
        after = pg_backend_pids(*pg)
        db_cpu = sum(process_cpu_seconds(p) - db_cpu_before.get(p, 0.0) for p in after)
    seconds = wrk["duration_us"] / 1e6
    errors = {k: v for k, v in wrk["errors"].items() if k != "status"}
    latency = wrk["latency_us"]
    result = Round(
        target=server.name,
        round=number,
        requests=wrk["requests"],
        duration_s=seconds,
        rps=wrk["requests"] / seconds,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        non2xx=wrk["non2xx"],
        socket_errors=errors,
        ok=wrk["requests"] - wrk["non2xx"],
        server_cpu_s=cpu,
        db_cpu_s=db_cpu,
        first_bad=f"{wrk['first_bad_status']} {wrk['first_bad_body']}" if wrk["non2xx"] else "",
        warmup=warmup,
    )
    if pg:
        time.sleep(1.0)  # PostgreSQL flushes session counts about once a second
        result.pg_sessions = pg_sessions(*pg) - sessions_before
    if before_events is not None and before_commits is not None:
        result.stored = settled_events(server) - before_events
        result.commits = group_commits(server) - before_commits
    return result


def profile_round(
    server: Server, args: argparse.Namespace, run: Run, pg: tuple[str, str] | None
) -> str | None:
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return None
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{server.name}-{args.run_id}.txt"
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(server.proc.pid),
            "--duration",
            str(max(1, round(args.duration))),
            "--rate",
            "250",
            "--nonblocking",
            "--gil",  # the server is CPU-bound on one core: where does the GIL go?
            "--function",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)  # let py-spy attach before the load starts
    profiled = measure(server, args, 0, duration=args.duration, warmup=True, pg=pg)
    profiled.label = "py-spy"
    run.rounds.append(profiled)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.exists():
        print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    return str(out)


# --------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def round_table(rounds: list[Round]) -> str:
    lines = [
        "| target | round | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors "
        "| 2xx | stored | stored - 2xx | commits | events/commit | server CPU µs/req "
        "| PG backends CPU µs/req | PG connections opened |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rounds:
        stored = "-" if r.stored is None else str(r.stored)
        extra = "-" if r.stored is None else str(r.stored - r.ok)
        commits = "-" if r.commits is None else str(r.commits)
        per_commit = "-" if not r.commits or r.stored is None else f"{r.stored / r.commits:.1f}"
        label = r.label or (f"{r.round}{' (warm-up)' if r.warmup else ''}")
        db_cpu = "-" if r.db_cpu_s is None else f"{1e6 * r.db_cpu_s / max(r.ok, 1):,.0f}"
        lines.append(
            f"| {r.target} | {label} | {r.rps:,.0f} | {r.p50_ms:.1f} | {r.p90_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.non2xx} | {sum(r.socket_errors.values())} | {r.ok} "
            f"| {stored} | {extra} | {commits} | {per_commit} | {r.cpu_us_per_req:,.0f} "
            f"| {db_cpu} | {'-' if r.pg_sessions is None else r.pg_sessions} |"
        )
    return "\n".join(lines)


@dataclass
class Verdict:
    target: str
    rps: float
    ratio: float | None
    paired: list[float]
    p50_ms: float
    p99_ms: float
    worst_p99_ms: float
    non2xx: int
    socket_errors: int
    all_stored: bool | None
    max_extra: int | None
    cpu_us: float
    cpu_ratio: float | None  # bare's server CPU per request / this one's

    def failures(self, connections: int) -> list[str]:
        if self.ratio is None:
            return []
        problems = []
        if self.ratio < TARGET_RATIO:
            problems.append(f"ratio {self.ratio:.2f} < {TARGET_RATIO}")
        if self.p99_ms > TARGET_P99_MS:
            problems.append(f"p99 {self.p99_ms:.1f} ms > {TARGET_P99_MS} ms")
        if self.non2xx or self.socket_errors:
            problems.append(f"{self.non2xx} non-2xx, {self.socket_errors} socket errors")
        if not self.all_stored:
            problems.append("a 2xx event is missing from the store")
        if self.max_extra is not None and self.max_extra > connections:
            problems.append(f"{self.max_extra} stored but never answered (> {connections})")
        return problems


def verdicts(rounds: list[Round]) -> list[Verdict]:
    measured = [r for r in rounds if not r.warmup]
    bare = [r for r in measured if r.target == "bare"]
    bare_rps = _median([r.rps for r in bare])
    bare_cpu = _median([r.cpu_us_per_req for r in bare])
    out = []
    for target in dict.fromkeys(r.target for r in measured):
        mine = [r for r in measured if r.target == target]
        everything = [r for r in rounds if r.target == target]
        rps = _median([r.rps for r in mine])
        paired = [
            m.rps / b.rps for m, b in zip(mine, bare, strict=False) if target != "bare" and b.rps
        ]
        stored = [r.stored_ok for r in everything if r.stored_ok is not None]
        extras = [r.stored - r.ok for r in everything if r.stored is not None]
        out.append(
            Verdict(
                target=target,
                rps=rps,
                ratio=None if target == "bare" else rps / bare_rps,
                paired=paired,
                p50_ms=_median([r.p50_ms for r in mine]),
                p99_ms=_median([r.p99_ms for r in mine]),
                worst_p99_ms=max(r.p99_ms for r in mine),
                non2xx=sum(r.non2xx for r in everything),
                socket_errors=sum(sum(r.socket_errors.values()) for r in everything),
                all_stored=all(stored) if stored else None,
                max_extra=max(extras) if extras else None,
                cpu_us=_median([r.cpu_us_per_req for r in mine]),
                cpu_ratio=None
                if target == "bare"
                else bare_cpu / _median([r.cpu_us_per_req for r in mine]),
            )
        )
    return out


def summary_table(found: list[Verdict], connections: int) -> str:
    lines = [
        "| target | req/s (median) | eventrelay/bare | paired ratios | p50 ms | p99 ms (median, "
        "worst) | non-2xx | socket errors | every 2xx stored | server CPU µs/req | CPU-cost ratio "
        "| targets |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for v in found:
        ratio = "1 (baseline)" if v.ratio is None else f"**{v.ratio:.2f}**"
        paired = ", ".join(f"{p:.2f}" for p in v.paired) or "-"
        if v.all_stored is None:
            stored = "-"
        else:
            stored = f"{'yes' if v.all_stored else 'NO'} (max stored-2xx {v.max_extra})"
        problems = v.failures(connections)
        verdict = "-" if v.ratio is None else ("met" if not problems else "; ".join(problems))
        lines.append(
            f"| {v.target} | {v.rps:,.0f} | {ratio} | {paired} | {v.p50_ms:.1f} "
            f"| {v.p99_ms:.1f}, {v.worst_p99_ms:.1f} | {v.non2xx} | {v.socket_errors} "
            f"| {stored} | {v.cpu_us:,.0f} "
            f"| {'-' if v.cpu_ratio is None else f'{v.cpu_ratio:.2f}'} | {verdict} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- final counts


def count_sqlite(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        count: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return count


def log_errors(path: Path) -> int:
    """Error-level lines in a server's JSON log (wrk's disconnects at the end show up here)."""
    return sum('"level":"error"' in line for line in path.read_text(errors="replace").splitlines())


def final_count(server: Server, admin_dsn: str) -> int:
    if server.sqlite_path is not None:
        return count_sqlite(server.sqlite_path)
    dsn = "postgresql://" + _dsn_for(admin_dsn, server.pg_dbname)
    count: int = asyncio.run(_pg_scalar(dsn, "SELECT count(*) FROM events"))
    return count


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds, per target, unmeasured")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=2, help="wrk threads (they share the CPU with the server)"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--subscriptions",
        type=int,
        default=0,
        help="subscriptions (matching every event) to create first: each event then also "
        "writes that many delivery rows",
    )
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a database to connect to for CREATE/DROP DATABASE",
    )
    parser.add_argument("--profile", action="store_true", help="add a py-spy round per backend")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=PATCH[,PATCH]",
        help="also run eventrelay on SQLite with bench/patched_serve.py patches (repeatable)",
    )
    parser.add_argument(
        "--pg-variant",
        action="append",
        default=[],
        metavar="NAME=PATCH[,PATCH]",
        help="the same on a fresh PostgreSQL database",
    )
    parser.add_argument(
        "--schemas",
        action="store_true",
        help="also run each backend with a JSON Schema registered for every event type "
        "(reported as <backend>+schema, with its ratio to the plain backend)",
    )
    parser.add_argument(
        "--filters",
        action="store_true",
        help="also run each backend with every subscription filtered by three conditions "
        "every event meets (reported as <backend>+filter, with its ratio to the plain backend)",
    )
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    args.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return args


def run_rounds(
    servers: list[Server], args: argparse.Namespace, run: Run, pg: dict[str, tuple[str, str]]
) -> None:
    for server in servers:
        if args.warmup > 0:
            run.rounds.append(
                measure(server, args, 0, duration=args.warmup, warmup=True, pg=pg.get(server.name))
            )
    for number in range(1, args.rounds + 1):
        # The order rotates each round: a target's place in the round (what ran
        # just before it, how warm the machine is) moved results by up to 10 %.
        shift = (number - 1) % len(servers)
        for server in servers[shift:] + servers[:shift]:
            result = measure(server, args, number, duration=args.duration, pg=pg.get(server.name))
            run.rounds.append(result)
            print(
                f"round {number} {server.name:9} {result.rps:9,.0f} req/s  "
                f"p99 {result.p99_ms:6.1f} ms  non-2xx {result.non2xx}  "
                f"stored {result.stored if result.stored is not None else '-'}",
                file=sys.stderr,
                flush=True,
            )


def report(run: Run, args: argparse.Namespace) -> list[Verdict]:
    found = verdicts(run.rounds)
    m = run.machine
    print(f"## Ingest benchmark {run.started_at}\n")
    print(
        f"eventrelay {m['commit']}; "
        f"{m['nproc']} CPUs ({m['cpu_model']}), load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])}; wrk -t{args.threads} "
        f"-c{args.connections}, {args.rounds} x {args.duration:g} s per target, interleaved, "
        f"{args.subscriptions} subscriptions; "
        "wrk runs on the same CPUs.\n"
    )
    print(summary_table(found, args.connections))
    by_target = {v.target: v for v in found}
    for v in found:
        base, _, extra = v.target.partition("+")
        plain = by_target.get(base)
        if extra in ("schema", "filter") and plain is not None and plain.rps:
            print(
                f"\n{v.target}: {v.rps / plain.rps:.2f} x {plain.target} without {extra}s "
                f"(server CPU {v.cpu_us:,.0f} vs {plain.cpu_us:,.0f} µs/request)"
            )
    print("\n### Rounds\n")
    print(round_table(run.rounds))
    if run.final_counts:
        print("\n### Store check at the end (events table counted directly)\n")
        print(
            "| backend | 2xx counted by wrk (all rounds) | events in the table | difference "
            "| error lines in the server log |"
        )
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, counts in run.final_counts.items():
            print(
                f"| {name} | {counts['ok']} | {counts['stored']} "
                f"| {counts['stored'] - counts['ok']} | {counts.get('log_errors', '-')} |"
            )
    if run.counters:
        print("\n### Counters (bench/patched_serve.py --patches count), whole run\n")
        for name, found_counts in run.counters.items():
            print(f"- {name}: {found_counts}")
    for name, path in run.profiles.items():
        print(f"\n### Profile: {name} ({path})\n")
        print(render(summarise(Path(path))))
    return found


def start_servers(
    args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack
) -> tuple[list[Server], dict[str, tuple[str, str]]]:
    """bare, then eventrelay per backend, then per variant; stopped when ``stack`` closes."""
    servers = [start_bare(workdir)]
    stack.callback(stop, servers[0])
    pg: dict[str, tuple[str, str]] = {}
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    targets = [(b, "", b == "postgres", False, False) for b in backends]
    if args.schemas:
        targets += [(f"{b}+schema", "", b == "postgres", True, False) for b in backends]
    if args.filters:
        targets += [(f"{b}+filter", "", b == "postgres", False, True) for b in backends]
    for variant in args.variant + args.pg_variant:
        name, _, patches = variant.partition("=")
        targets.append((name, patches, variant in args.pg_variant, False, False))
    for name, patches, on_postgres, schemas, filtered in targets:
        if on_postgres:
            url, dbname = stack.enter_context(fresh_pg_database(args.pg_dsn))
            server = start_eventrelay(
                name, url, workdir, patches, args.subscriptions, schemas, filtered
            )
            server.pg_dbname = dbname
            pg[name] = (args.pg_dsn, dbname)
        else:
            db_file = workdir / f"{name}.db"
            url = f"sqlite+aiosqlite:///{db_file}"
            server = start_eventrelay(
                name, url, workdir, patches, args.subscriptions, schemas, filtered
            )
            server.sqlite_path = db_file
        stack.callback(stop, server)
        servers.append(server)
    return servers, pg


def finish(server: Server, args: argparse.Namespace, run: Run, workdir: Path) -> None:
    """Stop an eventrelay server, count its events table, keep its log and counters."""
    stop(server)
    mine = [r for r in run.rounds if r.target == server.name]
    run.final_counts[server.name] = {
        "ok": sum(r.ok for r in mine),
        "stored": final_count(server, args.pg_dsn),
        "log_errors": log_errors(server.log_path),
    }
    if not args.no_json:  # keep the server logs beside the JSON
        logs = RESULTS / f"logs-{args.run_id}"
        logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.log_path, logs / server.log_path.name)
    counts = workdir / f"counts-{server.name}.json"
    if counts.exists():
        run.counters[server.name] = json.loads(counts.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    run = Run(
        started_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        machine=machine_info(),
        settings={
            k: v for k, v in vars(args).items() if k in ("duration", "rounds", "warmup", "threads")
        }
        | {
            "connections": args.connections,
            "backend": args.backend,
            "variants": args.variant + args.pg_variant,
            "subscriptions": args.subscriptions,
        },
    )
    with (
        tempfile.TemporaryDirectory(prefix="eventrelay-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        servers, pg = start_servers(args, workdir, stack)
        run_rounds(servers, args, run, pg)
        if args.profile:
            for server in servers[1:]:
                profile = profile_round(server, args, run, pg.get(server.name))
                if profile:
                    run.profiles[server.name] = profile
        for server in servers[1:]:
            finish(server, args, run, workdir)
    run.machine["loadavg_end"] = os.getloadavg()
    found = report(run, args)
    if not args.no_json:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"ingest-{args.run_id}.json"
        payload = asdict(run) | {"verdicts": [asdict(v) for v in found]}
        out.write_text(json.dumps(payload, indent=2, default=str))
        print(f"\n(JSON: {out.relative_to(ROOT)})", file=sys.stderr)
    missed = [v for v in found if v.failures(args.connections)]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
