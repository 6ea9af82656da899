"""What every broker sender shares: a connection per URL, timing, headers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

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
