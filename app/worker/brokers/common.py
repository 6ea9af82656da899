"""What every broker sender shares: a connection per URL, the link to the broker,
the attempt's deadline, timing, headers."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Generic, TypeVar

from app.worker.brokers.link import Link
from app.worker.protocol import Message, SendResult, failed

# HTTP-only headers that mean nothing on a broker message.
_HTTP_ONLY = frozenset({"content-type", "user-agent"})
JSON = "application/json"

C = TypeVar("C")
B = TypeVar("B", bound="BrokerConnection[Any]")


class PerUrl(Generic[B]):
    """A broker sender (a :class:`~app.worker.protocol.Sender`): its connections,
    one per destination URL, made on first use."""

    def __init__(self, make: Callable[[str], B]) -> None:
        self._make = make
        self.by_url: dict[str, B] = {}

    def connection(self, destination: str) -> B:
        connection = self.by_url.get(destination)
        if connection is None:
            connection = self.by_url[destination] = self._make(destination)
        return connection

    async def close(self) -> None:
        for connection in self.by_url.values():
            await connection.close()


class BrokerConnection(ABC, Generic[C]):
    """One destination URL of a broker (a :class:`~app.worker.protocol.Connection`)
    over its link (client ``C``, reconnect, backoff): a subclass opens, closes
    and checks its client and sends, each attempt ending by its deadline."""

    waiting_for: ClassVar[str]
    """What a timed-out attempt was waiting for, as its reason says."""

    def __init__(self, url: str, *, allow_private: bool) -> None:
        self._link: Link[C] = Link(
            url,
            allow_private=allow_private,
            open_client=self._open,
            close_client=self._close,
            usable=self._usable,
        )

    @classmethod
    def sender(cls: type[B], *, allow_private: bool) -> PerUrl[B]:
        return PerUrl(lambda url: cls(url, allow_private=allow_private))

    @abstractmethod
    async def send(self, message: Message) -> SendResult: ...

    async def close(self) -> None:
        await self._link.close()

    @abstractmethod
    async def _open(self) -> C: ...

    @abstractmethod
    async def _close(self, client: C) -> object: ...

    def _usable(self, client: C) -> bool:
        return True


class TaskBoundConnection(BrokerConnection[C]):
    """A broker connection whose client may not give up when cancelled: each
    attempt runs as a task of its own, left behind at its deadline
    (:class:`Deadlines`)."""

    def __init__(self, url: str, *, allow_private: bool) -> None:
        super().__init__(url, allow_private=allow_private)
        self._deadlines = Deadlines()

    async def send(self, message: Message) -> SendResult:
        started = time.perf_counter()
        attempt = self._attempt(message, started)
        return await self._deadlines.run(attempt, started, message, self.waiting_for)

    @abstractmethod
    async def _attempt(self, message: Message, started: float) -> SendResult:
        """One attempt, its failures turned into results (the deadline is the caller's)."""


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
        loop = asyncio.get_running_loop()
        task = loop.create_task(attempt)
        # One future that the attempt's end or the deadline, whichever is first,
        # completes (what asyncio.wait does, without its sets and callbacks).
        waiter: asyncio.Future[None] = loop.create_future()
        task.add_done_callback(lambda _: _release(waiter))
        deadline = loop.call_later(message.timeout_s, _release, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            deadline.cancel()
        if task.done():
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


class Watched:
    """One attempt under an :class:`Overdue` watch."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, deadline: float, task: asyncio.Task[Any]) -> None:
        self.deadline = deadline
        self.task = task
        self.cancelling = task.cancelling()  # outside cancellations already asked for
        self.expired = False

    def timed_out(self) -> bool:
        """After a CancelledError: whether it was this watch's (the attempt timed
        out) rather than an outside cancellation, which must go on."""
        return self.expired and self.task.uncancel() <= self.cancelling

    def passed_unseen(self) -> bool:
        """Whether the deadline passed though no CancelledError reached the
        attempt (the client swallowed it); if so the watch's cancellation is
        taken back, as :meth:`timed_out` does."""
        if self.expired:
            self.task.uncancel()
        return self.expired


class Overdue:
    """The deadlines of a connection's attempts, each cancelling its attempt's
    task when it passes, as :func:`asyncio.timeout` does, but checked by one
    timer every :data:`OVERDUE_CHECK_SECONDS` rather than one timer armed and
    cancelled per attempt (about 5 µs of a publish that costs the bare client
    about 70 µs). A deadline fires up to that much late.

    Use: ``watched = overdue.watch(seconds)``, the attempt, ``except
    CancelledError: if watched.timed_out(): …``, ``finally: overdue.end(watched)``.
    """

    def __init__(self) -> None:
        self._watched: set[Watched] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, seconds: float) -> Watched:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        watched = Watched(loop.time() + seconds, task)
        self._watched.add(watched)
        if self._timer is None:
            self._timer = loop.call_later(OVERDUE_CHECK_SECONDS, self._check, loop)
        return watched

    def end(self, watched: Watched) -> None:
        self._watched.discard(watched)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for watched in [w for w in self._watched if w.deadline <= now]:
            self._watched.discard(watched)
            watched.expired = True
            watched.task.cancel()
        self._timer = (
            loop.call_later(OVERDUE_CHECK_SECONDS, self._check, loop) if self._watched else None
        )


OVERDUE_CHECK_SECONDS = 0.05


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def message_headers(message: Message) -> dict[str, str]:
    """The ``webhook-*`` headers (and the subscription's own) for a broker message."""
    headers = dict(message.headers)
    for name in message.headers:
        if name.lower() in _HTTP_ONLY:
            del headers[name]
    return headers


def content_type(message: Message) -> str:
    return message.headers.get("content-type", JSON)


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def failed_since(started: float, reason: str) -> SendResult:
    return failed(elapsed_ms(started), reason[:1000])


def timed_out(started: float, message: Message, what: str) -> SendResult:
    return failed_since(started, f"timed out after {message.timeout_s * 1000:.0f} ms {what}")
