"""The real ``eventrelay serve`` process on a free loopback port.

A :class:`ServerProcess` owns one database URL and may be started, signalled
and restarted on it any number of times; each start writes its own
``server-<n>.stdout.log`` / ``.stderr.log`` in the test's directory. Readiness
is a deadline-bounded poll of ``/readyz``; teardown sends SIGTERM and, if the
process has not exited in time, SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, BACKENDS, pg_admin, pg_url
from tests.e2e.receivers import ReceiverPool

if TYPE_CHECKING:
    from tests.e2e.procs import Relay

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0  # the CLI allows in-flight work 10 s to finish
PORT_ATTEMPTS = 3
_UNSET = object()


def eventrelay_executable() -> str:
    beside = Path(sys.executable).with_name("eventrelay")
    return str(beside if beside.exists() else REPO / ".venv" / "bin" / "eventrelay")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1]


class ServerStartError(RuntimeError):
    pass


class ManagedProcess:
    """Signals and stopping for a test's child process (``self.process``)."""

    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, no warning: the crash the durability contract is about."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=STOP_TIMEOUT)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; SIGKILL if it outlives ``timeout``. Returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
                raise
        return self.process.returncode

    def stop(self) -> None:
        """Teardown: stop whatever is still running."""
        if self.process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate()


class ServerProcess(ManagedProcess):
    """One ``eventrelay serve`` on one database; restartable."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        *,
        admin_token: str | None = ADMIN_TOKEN,
        env: dict[str, str] | None = None,
        worker: bool = True,
        executable: str | None = None,
    ) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.admin_token = admin_token
        self.extra_env = dict(env or {})
        self.worker = worker
        self.executable = executable or eventrelay_executable()
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    # -- lifecycle ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTRELAY_")}
        env.update(
            {
                "EVENTRELAY_DATABASE_URL": self.database_url,
                "EVENTRELAY_LOG_FORMAT": "json",
                "EVENTRELAY_ALLOW_PRIVATE_TARGETS": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.admin_token is not None:
            env["EVENTRELAY_ADMIN_TOKEN"] = self.admin_token
        env.update(self.extra_env)
        return env

    def start(self, *, timeout: float = READY_TIMEOUT) -> None:
        """Start the process and return once ``/readyz`` answers 200."""
        assert not self.running, "the server is already running"
        for attempt in range(PORT_ATTEMPTS):
            self._spawn()
            try:
                self.wait_ready(timeout)
                return
            except ServerStartError:
                # Another process may have taken the port between probe and bind.
                if attempt == PORT_ATTEMPTS - 1 or "address already in use" not in self.stderr():
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.starts += 1
        self.port = free_port()
        command = [
            self.executable,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if not self.worker:
            command.append("--no-worker")
        with self.stdout_path().open("wb") as out, self.stderr_path().open("wb") as err:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise ServerStartError(
                        f"the server exited with {self.process.returncode} before it was ready\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        return
                time.sleep(0.05)
        self.kill()
        raise ServerStartError(f"the server was not ready within {timeout} s\n" + self.log_tail())

    def restart(self) -> None:
        if self.running:
            self.terminate()
        self.start()

    # -- clients ------------------------------------------------------------

    def _client_options(self, token: str | None, timeout: float) -> dict[str, Any]:
        token = self.admin_token if token is _UNSET else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return {"base_url": self.base_url, "headers": headers, "timeout": timeout}

    def client(self, token: Any = _UNSET, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(**self._client_options(token, timeout))

    def async_client(
        self, token: Any = _UNSET, timeout: float = 10.0, **kw: Any
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._client_options(token, timeout), **kw)

    # -- logs ---------------------------------------------------------------

    def stdout_path(self, start: int | None = None) -> Path:
        return self.workdir / f"server-{start or self.starts}.stdout.log"

    def stderr_path(self, start: int | None = None) -> Path:
        return self.workdir / f"server-{start or self.starts}.stderr.log"

    def stdout(self, start: int | None = None) -> str:
        return self.stdout_path(start).read_text(errors="replace")

    def stderr(self, start: int | None = None) -> str:
        return self.stderr_path(start).read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        out = self.stdout().splitlines()[-lines:]
        err = self.stderr().splitlines()[-lines:]
        return "--- stdout ---\n" + "\n".join(out) + "\n--- stderr ---\n" + "\n".join(err)


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Build (and by default start) servers; every one is stopped at teardown."""
    servers: list[ServerProcess] = []

    def make(database_url: str, *, start: bool = True, **options: Any) -> ServerProcess:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = ServerProcess(database_url, workdir, **options)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()
        print(f"server logs: {server.workdir}")


@pytest.fixture
def server(database_url: str, server_factory: ServerFactory) -> ServerProcess:
    """A running server on this test's own database (SQLite and PostgreSQL)."""
    return server_factory(database_url)


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database shared by one module's tests on one backend, for read-mostly checks."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path_factory.mktemp("module-db") / "eventrelay.db"
        target.write_bytes(template.read_bytes())
        yield f"sqlite+aiosqlite:///{target}"
        return
    pg_template = request.getfixturevalue("postgres_template")
    name = f"er_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield pg_url(name)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_module_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, **options: Any
) -> Iterator[ServerProcess]:
    server = ServerProcess(database_url, tmp_path_factory.mktemp("server"), **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per module, with the default settings (a module that needs
    other settings defines its own ``shared_server``)."""
    yield from start_module_server(module_database_url, tmp_path_factory)


# -- assertions shared by the e2e modules ---------------------------------------


def assert_problem(response: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    """The answer is RFC 9457 problem details with the expected status."""
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), (
        response.headers.get("content-type")
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == response.status_code, body
    assert "Traceback" not in response.text
    return body


def event_count(client: httpx.Client) -> int:
    response = client.get("/v1/stats")
    assert response.status_code == 200, response.text
    return int(response.json()["events"])


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed as a JSON object; fails on the first line that is not one."""
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = json.loads(line)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON: {line[:300]!r}")
        assert isinstance(value, dict), f"log line {number} is not a JSON object: {line[:300]!r}"
        objects.append(value)
    return objects


@pytest.fixture
async def receivers() -> AsyncIterator[ReceiverPool]:
    """Webhook receivers on loopback, closed after the test."""
    async with ReceiverPool() as pool:
        yield pool


@pytest.fixture
async def relay(shared_server: ServerProcess) -> AsyncIterator[Relay]:
    """An API client of the module's ``shared_server`` (each module starts its own)."""
    from tests.e2e.procs import Relay  # procs imports this module

    async with Relay(shared_server) as client:
        yield client
