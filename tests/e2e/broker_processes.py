"""Brokers of a test's own: NATS with JetStream, Redis and a RabbitMQ node, each a
child process on a free loopback port with its data in the test's directory, so
a test can stop one (SIGTERM, or SIGKILL for the whole process group) and start
it again on the same port with the same data.

Each broker runs in a session of its own; :meth:`BrokerProcess.stop` and the
fixtures' teardown kill the whole process group, so nothing outlives the test
even when it fails. A broker binary that is missing skips the test, and fails
it under ``CI=true`` (:func:`tests.conftest.unavailable`).

What each broker promises about a message it has acknowledged, and so what a
restart may lose:

- NATS JetStream (file storage) acknowledges a publish once the message is
  written to the stream's block file (nats-server 2.9 flushes in place); the
  write is in the kernel's page cache, so a SIGKILL of the server loses nothing
  (an operating system crash could: the file is synced every two minutes).
- Redis acknowledges ``XADD`` after appending it to the AOF. With
  ``appendfsync always`` that write is made (and synced) before the reply, so
  a SIGKILL loses nothing; with ``everysec`` a SIGTERM flushes the AOF on
  shutdown, while a SIGKILL could lose a write postponed behind a slow fsync.
- RabbitMQ confirms a persistent message routed to a durable queue once the
  queue has written it to disk, so a SIGKILL of the node loses no confirmed
  message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import unavailable
from tests.e2e.conftest import STOP_TIMEOUT, free_port

NATS_SERVER = os.environ.get("EVENTRELAY_TEST_NATS_SERVER", "/usr/sbin/nats-server")
REDIS_SERVER = os.environ.get("EVENTRELAY_TEST_REDIS_SERVER", "/usr/bin/redis-server")
RABBITMQ_SERVER = os.environ.get(
    "EVENTRELAY_TEST_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server"
)
EPMD = os.environ.get("EVENTRELAY_TEST_EPMD", "epmd")
START_TIMEOUT = 60.0


def _executable(path: str, what: str) -> str:
    found = shutil.which(path)
    if found is None:
        unavailable(f"{what} ({path}) is not installed")
    return found


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _answers(port: int, request: bytes, expected: bytes) -> bool:
    """A connection to ``port`` answers ``request`` with a line starting ``expected``."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
    ):
        if request:
            sock.sendall(request)
        return sock.recv(256).startswith(expected)
    return False


class Spawned:
    """A child process in a session (and so a process group) of its own."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=log.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> float:
        """Send ``signum`` (to the group for SIGKILL) and wait; returns the seconds it took.
        Whatever is left of the group afterwards is killed."""
        started = time.monotonic()
        if self.running:
            if signum == signal.SIGKILL:
                self.signal_group(signum)
            else:
                self.process.send_signal(signum)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
        self.signal_group(signal.SIGKILL)  # children that outlived the leader
        return time.monotonic() - started

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class BrokerProcess(ABC):
    """One broker of the test's own: started, stopped and started again on one port
    with one data directory."""

    kind = ""
    what = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.server: Spawned | None = None
        self.starts = 0

    @property
    @abstractmethod
    def url(self) -> str: ...

    @abstractmethod
    def command(self) -> list[str]: ...

    def environment(self) -> dict[str, str] | None:
        return None

    def ready(self) -> bool:
        return _accepts(self.port)

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start the broker and wait until it serves; returns the seconds it took."""
        assert self.server is None or not self.server.running, f"{self.what} already runs"
        self.starts += 1
        started = time.monotonic()
        log = self.directory / f"{self.kind}-{self.starts}.log"
        self.server = Spawned(self.command(), log, self.environment())
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self.server.running:
                raise RuntimeError(
                    f"{self.what} exited with {self.server.process.returncode}\n"
                    + self.server.tail()
                )
            if self.ready():
                return time.monotonic() - started
            time.sleep(0.05)
        self.server.stop(signal.SIGKILL)
        raise RuntimeError(f"{self.what} did not serve within {timeout} s\n" + self.server.tail())

    def stop(self, signum: int = signal.SIGTERM) -> float:
        """Stop the broker with ``signum``; returns the seconds until it had exited."""
        assert self.server is not None
        return self.server.stop(signum)

    def close(self) -> None:
        """Teardown: nothing of the broker keeps running."""
        if self.server is not None:
            self.server.stop(signal.SIGKILL)


class NatsServer(BrokerProcess):
    kind, what = "nats", "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = _executable(NATS_SERVER, "nats-server")
        return [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.data)]

    def ready(self) -> bool:
        return _answers(self.port, b"", b"INFO ")


class RedisServer(BrokerProcess):
    """``appendonly yes`` (no RDB snapshots); ``fsync`` is ``always`` or ``everysec``."""

    kind, what = "redis", "redis-server"

    def __init__(self, directory: Path, fsync: str = "always") -> None:
        super().__init__(directory)
        self.fsync = fsync

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = _executable(REDIS_SERVER, "redis-server")
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.data),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--daemonize",
            "no",
        ]

    def ready(self) -> bool:  # replies LOADING while it reads the AOF
        return _answers(self.port, b"PING\r\n", b"+PONG")


class RabbitMQNode(BrokerProcess):
    """A RabbitMQ node of its own: its node name, AMQP and distribution ports,
    Mnesia and log directories, config, no plugins, a HOME with its own Erlang
    cookie, and an ``epmd`` of its own on a port of its own (stopped at close)."""

    kind, what = "rabbitmq", "rabbitmq-server"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.name = f"ertest{self.port}@localhost"
        self.epmd: Spawned | None = None
        home = directory / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        return [_executable(RABBITMQ_SERVER, "rabbitmq-server")]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        d = self.directory
        env.update(
            {
                "HOME": str(d / "home"),
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.data),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
            }
        )
        return env

    def start(self, timeout: float = START_TIMEOUT) -> float:
        if self.epmd is None or not self.epmd.running:
            # Its own epmd, so Erlang does not start a shared daemon that outlives the test.
            command = [_executable(EPMD, "epmd"), "-port", str(self.epmd_port)]
            command += ["-address", "127.0.0.1"]
            self.epmd = Spawned(command, self.directory / "epmd.log")
            deadline = time.monotonic() + 10
            while not _accepts(self.epmd_port):
                assert self.epmd.running, self.epmd.tail()
                assert time.monotonic() < deadline, f"epmd did not listen\n{self.epmd.tail()}"
                time.sleep(0.02)
        return super().start(timeout)

    def close(self) -> None:
        super().close()
        if self.epmd is not None:
            self.epmd.stop(signal.SIGKILL)


@contextlib.contextmanager
def broker_process(kind: str, directory: Path, **options: str) -> Iterator[BrokerProcess]:
    """A started broker of ``kind`` (``nats``, ``redis``, ``rabbitmq``) in ``directory``;
    every process of it is killed and the directory removed on exit."""
    makers: dict[str, type[BrokerProcess]] = {
        "nats": NatsServer,
        "redis": RedisServer,
        "rabbitmq": RabbitMQNode,
    }
    directory.mkdir(parents=True, exist_ok=True)
    broker = makers[kind](directory, **options)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
        if broker.server is not None:  # shown by pytest when the test fails
            print(f"{broker.what} log (last start):\n{broker.server.tail()}")
        shutil.rmtree(directory, ignore_errors=True)
