"""What the benchmark scripts share: process CPU time, a free port, one PostgreSQL
statement, the receiver and server processes, the database's size."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


async def lanes(send: Callable[[int], Awaitable[object]], n: int, concurrency: int) -> None:
    """Call ``send(0)`` … ``send(n - 1)``, ``concurrency`` calls at once."""
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            await send(i)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def pg_execute(dsn: str, statement: str) -> None:
    """One statement on its own connection (CREATE/DROP DATABASE cannot run in a transaction)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def start_receiver() -> tuple[subprocess.Popen[str], int]:
    """``bench/receiver.py`` in its own process, and its port."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "receiver.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        raise RuntimeError("the receiver did not start")
    return proc, int(line[1])


def start_server(
    url: str, workdir: Path, token: str, settings: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """``eventrelay serve`` (embedded worker) on a free port with ``settings``
    (``EVENTRELAY_*`` variables) on top of the database URL and admin token."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EVENTRELAY_")},
        "EVENTRELAY_DATABASE_URL": url,
        "EVENTRELAY_ADMIN_TOKEN": token,
        "EVENTRELAY_ALLOW_PRIVATE_TARGETS": "true",
        **settings,
    }
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "eventrelay"), "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("eventrelay exited; see server.log")
        time.sleep(0.2)
    raise RuntimeError("eventrelay did not become ready")


async def database_bytes(url: str, sqlite_path: Path | None) -> int:
    """SQLite: the file and its WAL; PostgreSQL: ``pg_database_size``."""
    if sqlite_path is not None:
        return sum(
            p.stat().st_size for p in (sqlite_path, Path(f"{sqlite_path}-wal")) if p.exists()
        )
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


def run_on_fresh_database(
    backend: str,
    pg_dsn: str,
    prefix: str,
    run: Callable[[str, Path | None, Path], Awaitable[int]],
) -> int:
    """``run(url, sqlite_path, workdir)`` on a database of its own: a SQLite file
    in a temporary directory, or a PostgreSQL database created on ``pg_dsn``
    for it and dropped afterwards (``sqlite_path`` is then None)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"eventrelay-{prefix}-"))
    try:
        if backend == "sqlite":
            path = workdir / "eventrelay.db"
            return asyncio.run(run(f"sqlite+aiosqlite:///{path}", path, workdir))
        name = f"er_{prefix}_{secrets.token_hex(4)}"
        asyncio.run(pg_execute(pg_dsn, f'CREATE DATABASE "{name}"'))
        try:
            url = pg_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            return asyncio.run(run(f"{url}/{name}", None, workdir))
        finally:
            asyncio.run(pg_execute(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
