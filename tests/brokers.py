"""The real brokers the destination tests use, and a TCP proxy that can cut them off.

RabbitMQ, NATS with JetStream and Redis on loopback (override with
``EVENTRELAY_TEST_AMQP_URL``, ``…_NATS_URL``, ``…_REDIS_URL``). Each test
makes its own exchange, queue, stream, subject or key with a unique name and
removes it afterwards. Under ``CI=true`` an unreachable broker fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import nats
from nats.js.api import DiscardPolicy, StreamConfig
from redis.asyncio import Redis

from tests.conftest import unavailable

AMQP_URL = os.environ.get("EVENTRELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("EVENTRELAY_TEST_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("EVENTRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique(prefix: str) -> str:
    return f"er-test-{prefix}-{uuid.uuid4().hex[:10]}"


def require(url: str, what: str) -> None:
    """Skip (fail under CI=true) when the broker at ``url`` does not answer."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=2):
            return
    except OSError as exc:
        unavailable(f"{what} at {parts.hostname}:{parts.port} is unreachable ({exc})")


def with_address(url: str, host: str, port: int) -> str:
    """``url`` pointed at ``host:port`` instead (credentials and path kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return parts._replace(netloc=netloc).geturl()


# -- RabbitMQ -------------------------------------------------------------------


@dataclass
class RabbitQueue:
    """An exchange of its own with one queue bound to every routing key (``#``)."""

    url: str
    exchange: str
    queue: str
    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel

    async def drain(self, expected: int, timeout: float = 20.0) -> list[Any]:
        """Read ``expected`` messages (acknowledging them), in queue order."""
        queue = await self.channel.get_queue(self.queue, ensure=False)
        got: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(got) < expected:
            message = await queue.get(fail=False)
            if message is None:
                if loop.time() > deadline:
                    raise AssertionError(f"{len(got)} of {expected} messages in {timeout} s")
                await asyncio.sleep(0.02)
                continue
            await message.ack()
            got.append(message)
        return got


@contextlib.asynccontextmanager
async def rabbit_queue(arguments: dict[str, Any] | None = None) -> AsyncIterator[RabbitQueue]:
    require(AMQP_URL, "RabbitMQ")
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange_name, queue_name = unique("x"), unique("q")
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC)
    queue = await channel.declare_queue(queue_name, arguments=arguments)
    await queue.bind(exchange, "#")
    try:
        yield RabbitQueue(AMQP_URL, exchange_name, queue_name, connection, channel)
    finally:
        cleanup = await connection.channel()
        await cleanup.queue_delete(queue_name)
        await cleanup.exchange_delete(exchange_name)
        await connection.close()


# -- NATS JetStream -------------------------------------------------------------


@dataclass
class NatsStream:
    url: str
    name: str
    prefix: str  # the stream takes subjects "<prefix>.>"
    client: Any
    js: Any

    async def messages(self) -> list[Any]:
        """Every message in the stream, in stream order."""
        info = await self.js.stream_info(self.name)
        if not info.state.messages:
            return []
        first, last = info.state.first_seq, info.state.last_seq
        return [await self.js.get_msg(self.name, seq) for seq in range(first, last + 1)]


@contextlib.asynccontextmanager
async def nats_stream(**config: Any) -> AsyncIterator[NatsStream]:
    require(NATS_URL, "NATS")
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    name = unique("s").replace("-", "_")
    prefix = name.lower()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], **config))
    try:
        yield NatsStream(NATS_URL, name, prefix, client, js)
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await client.close()


DISCARD_NEW = DiscardPolicy.NEW


# -- Redis ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def redis_client() -> AsyncIterator[tuple[Redis, list[str]]]:
    """A client and a list the test appends its keys to (deleted afterwards)."""
    require(REDIS_URL, "Redis")
    client = Redis.from_url(REDIS_URL)
    keys: list[str] = []
    try:
        yield client, keys
    finally:
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- consumers ------------------------------------------------------------------


class Loops:
    """Tasks that each repeat a step (read a stream, fetch a batch) until :meth:`stop`.

    Stopping sets a flag the loops check as well as cancelling them: redis-py
    writes each command under ``asyncio.wait_for``, which on Python 3.11 returns
    the write's result instead of raising when a cancellation arrives as the
    write completes (CPython gh-86296), and a loop that waited for its
    cancellation alone would go on for ever.
    """

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def repeat(self, step: Callable[[], Awaitable[object]]) -> None:
        async def loop() -> None:
            while not self._stopping:
                await step()

        self.tasks.append(asyncio.create_task(loop()))

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for task in self.tasks:
            task.cancel()
        if not self.tasks:
            return
        done, late = await asyncio.wait(self.tasks, timeout=timeout)
        assert not late, f"{len(late)} of {len(self.tasks)} loops still run {timeout} s after stop"
        for task in done:  # a step that failed as it stopped: nothing more to learn
            if not task.cancelled():
                task.exception()


# -- cutting the network --------------------------------------------------------


@dataclass
class TcpProxy:
    """A TCP forwarder on loopback to ``target``; ``cut()`` closes every connection
    and stops listening (the broker is gone), ``restore()`` listens again;
    ``stall()`` keeps the connections open but forwards nothing (the broker has
    gone silent), ``resume()`` forwards what was held and goes on. ``sent`` counts
    the bytes clients have sent towards ``target`` (forwarded or held).

    While cut, the port stays bound by a socket that does not listen: a
    connection to it is refused, as to a broker that is down. Left unbound, the
    port (an ephemeral one) could be taken by another test's listener, or chosen
    by the kernel as the local port of the very connection made to it, which
    then connects to itself and reads back what it sent."""

    target: tuple[str, int]
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _flowing: asyncio.Event = field(default_factory=asyncio.Event)
    _held: socket.socket | None = None  # the port, while cut
    connections: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def start(self) -> None:
        self._release()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        await self.close()
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", self.port))
        self._held = held

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        """Stop listening and let the port go."""
        # Stop listening and abort the open connections first: wait_closed()
        # waits for the server's connections, so awaiting it before they are
        # aborted could wait for ever.
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await asyncio.wait_for(server.wait_closed(), timeout=10)
        self._release()

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._server is None:  # cut while this connection was being opened
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool
        ) -> None:
            try:
                while data := await src.read(65536):
                    if upstream:
                        self.sent += len(data)
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self._writers -= {writer, up_writer}


@contextlib.asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 0))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
