"""What every broker sender shares: a connection per URL, the attempt's deadline,
timing, headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from app.worker.protocol import Message, SendResult, failed

# HTTP-only headers that mean nothing on a broker message.
_HTTP_ONLY = frozenset({"content-type", "user-agent"})


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class PerUrl(Generic[C]):
    """A broker sender (a :class:`~app.worker.protocol.Sender`): its connections,
    one per destination URL, made on first use."""

    def __init__(self, make: Callable[[str], C]) -> None:
        self._make = make
        self.by_url: dict[str, C] = {}

    def connection(self, destination: str) -> C:
        connection = self.by_url.get(destination)
        if connection is None:
            connection = self.by_url[destination] = self._make(destination)
        return connection

    async def close(self) -> None:
        for connection in self.by_url.values():
            await connection.close()


class Deadlines:
    """Attempts that end by their deadline, whatever the client library does.

    An attempt runs as a task of its own; at ``message.timeout_s`` it is
    cancelled and reported as timed out without waiting for it to unwind. A
    cancellation alone is not enough: the clients wait under
    ``asyncio.wait_for``, which on Python 3.11 swallows a cancellation that
    arrives as what it waits for completes, and a client that goes on to wait
    on a broker that has gone silent would hold the worker's slot and the
    key's line for as long as the broker stays silent.
    """

    def __init__(self) -> None:
        self._late: set[asyncio.Task[SendResult]] = set()

    async def run(
        self,
        attempt: Coroutine[Any, Any, SendResult],
        started: float,
        message: Message,
        waiting_for: str,
    ) -> SendResult:
        task = asyncio.ensure_future(attempt)
        try:
            done, _ = await asyncio.wait((task,), timeout=message.timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done:
            return task.result()
        task.cancel()
        self._late.add(task)
        task.add_done_callback(self._forget)
        return timed_out(started, message, waiting_for)

    def _forget(self, task: asyncio.Task[SendResult]) -> None:
        """A late attempt's own outcome is not wanted: it was reported at the deadline."""
        self._late.discard(task)
        if not task.cancelled():
            task.exception()


def message_headers(message: Message) -> dict[str, str]:
    """The ``webhook-*`` headers (and the subscription's own) for a broker message."""
    return {k: v for k, v in message.headers.items() if k.lower() not in _HTTP_ONLY}


def content_type(message: Message) -> str:
    return message.headers.get("content-type", "application/json")


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def failed_since(started: float, reason: str) -> SendResult:
    return failed(elapsed_ms(started), reason[:1000])


def timed_out(started: float, message: Message, what: str) -> SendResult:
    return failed_since(started, f"timed out after {message.timeout_s * 1000:.0f} ms {what}")
