"""Processes and API helpers for the e2e delivery tests.

:class:`WorkerProcess` is a standalone ``eventrelay worker`` (the ``serve``
process is :class:`tests.e2e.conftest.ServerProcess`); it is ready once it
logs that its delivery worker started. :class:`Relay` wraps an async client of
one server with the calls the delivery tests make. :func:`socket_ports` tells
which local TCP ports a process holds, so a test can see which worker sent a
request.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import ManagedProcess, ServerProcess, eventrelay_executable

READY_TIMEOUT = 30.0
WORKER_STARTED = "delivery worker started"


class WorkerProcess(ManagedProcess):
    """One ``eventrelay worker`` on one database; restartable."""

    def __init__(self, database_url: str, workdir: Path, env: dict[str, str] | None = None):
        self.database_url = database_url
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTRELAY_")}
        env.update(
            {
                "EVENTRELAY_DATABASE_URL": self.database_url,
                "EVENTRELAY_ADMIN_TOKEN": ADMIN_TOKEN,
                "EVENTRELAY_LOG_FORMAT": "json",
                "EVENTRELAY_ALLOW_PRIVATE_TARGETS": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def log_path(self, start: int | None = None) -> Path:
        return self.workdir / f"worker-{start or self.starts}.log"

    def log(self, start: int | None = None) -> str:
        path = self.log_path(start)
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start and return once the worker has logged that it runs."""
        assert not self.running, "the worker is already running"
        self.starts += 1
        with self.log_path().open("wb") as out:
            self.process = subprocess.Popen(
                [eventrelay_executable(), "worker"],
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with {self.process.returncode}\n{self.log()[-4000:]}"
                )
            if any(line.get("message") == WORKER_STARTED for line in log_lines(self.log())):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the worker did not start within {timeout} s\n{self.log()[-4000:]}")


class WorkerPool:
    """Builds workers in a test's directory; stops every one at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.workers: list[WorkerProcess] = []

    def make(self, database_url: str, env: dict[str, str] | None = None) -> WorkerProcess:
        workdir = self.directory / f"worker{len(self.workers)}"
        workdir.mkdir()
        worker = WorkerProcess(database_url, workdir, env)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()


def worker_pool(directory: Path) -> Iterator[WorkerPool]:
    """Body of a ``workers`` fixture: ``yield from worker_pool(tmp_path)``."""
    pool = WorkerPool(directory)
    try:
        yield pool
    finally:
        pool.stop_all()
        for worker in pool.workers:
            print(f"worker logs: {worker.workdir}")


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among ``text``'s lines (a line being written may be partial)."""
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                found.append(value)
    return found


# -- which sockets a process holds -------------------------------------------------

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def socket_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process ``pid`` has open (Linux ``/proc``)."""
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                match = _SOCKET_LINK.match(os.readlink(f"/proc/{pid}/fd/{fd}"))
                if match:
                    inodes.add(match.group(1))
    ports: set[int] = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# -- the API, as the delivery tests use it ------------------------------------------


class Relay:
    """An admin client of one running server, with the delivery tests' calls."""

    def __init__(self, server: ServerProcess, timeout: float = 15.0) -> None:
        self.server = server
        self.http = server.async_client(timeout=timeout)

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    @staticmethod
    def _json(response: httpx.Response, status: int) -> Any:
        assert response.status_code == status, (response.status_code, response.text[:500])
        return response.json()

    async def subscribe(self, url: str, **fields: Any) -> dict[str, Any]:
        response = await self.http.post("/v1/subscriptions", json={"url": url, **fields})
        created: dict[str, Any] = self._json(response, 201)
        return created

    async def subscription(self, subscription_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._json(
            await self.http.get(f"/v1/subscriptions/{subscription_id}"), 200
        )
        return found

    async def patch(self, subscription_id: str, **fields: Any) -> dict[str, Any]:
        response = await self.http.patch(f"/v1/subscriptions/{subscription_id}", json=fields)
        patched: dict[str, Any] = self._json(response, 200)
        return patched

    async def rotate_secret(self, subscription_id: str) -> str:
        response = await self.http.post(f"/v1/subscriptions/{subscription_id}/rotate-secret")
        return str((self._json(response, 200))["secret"])

    async def publish(
        self,
        event_type: str,
        data: Any = None,
        *,
        key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"type": event_type, "data": data}
        if key is not None:
            body["key"] = key
        response = await self.http.post(
            "/v1/events", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        accepted: dict[str, Any] = self._json(response, 202)
        return accepted

    async def event(self, event_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._json(await self.http.get(f"/v1/events/{event_id}"), 200)
        return found

    async def delivery(self, event_id: str) -> dict[str, Any]:
        """The event's only delivery."""
        deliveries = (await self.event(event_id))["deliveries"]
        assert len(deliveries) == 1, deliveries
        found: dict[str, Any] = deliveries[0]
        return found

    async def attempts(self, event_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/v1/events/{event_id}/attempts")
        items: list[dict[str, Any]] = (self._json(response, 200))["items"]
        return items

    async def stats(self) -> dict[str, Any]:
        found: dict[str, Any] = self._json(await self.http.get("/v1/stats"), 200)
        return found

    async def delivery_in(self, event_id: str, *statuses: str) -> dict[str, Any] | None:
        """The event's delivery if its status is one of ``statuses`` (for wait_until)."""
        delivery = await self.delivery(event_id)
        return delivery if delivery["status"] in statuses else None


def unique_type(prefix: str = "dlv") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"
