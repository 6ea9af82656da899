"""Webhook receivers for the e2e delivery tests: real aiohttp servers on loopback.

A :class:`Receiver` listens on a free port of 127.0.0.1 in the test's own
event loop and records every request it gets as a :class:`Receipt` (arrival
time, path, headers, raw body, the status it answered, the peer's port). What
it answers is decided by a *behaviour*: an async function of the receipt that
returns an aiohttp response (default: 200). A :class:`ReceiverPool` owns any
number of receivers and closes them all.

:func:`wait_until` is the deadline-bounded poll every test waits with.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Behaviour = Callable[["Receipt"], Awaitable[web.StreamResponse]]
SHUTDOWN_TIMEOUT = 2.0


@dataclass(slots=True)
class Receipt:
    """One request as the receiver saw it."""

    number: int
    at: float  # time.monotonic() at arrival
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    peer_port: int | None
    status: int | None = None  # what we answered; None while the behaviour runs
    finished_at: float | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def data(self) -> Any:
        return self.json["data"]

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def in_progress(self) -> bool:
        return self.status is None


def reply(status: int = 200, headers: dict[str, str] | None = None, body: str = "") -> web.Response:
    return web.Response(status=status, headers=headers, text=body)


async def always_ok(_: Receipt) -> web.StreamResponse:
    return reply(200, body="ok")


class Receiver:
    """A loopback HTTP server that records what it receives."""

    def __init__(self, behaviour: Behaviour = always_ok) -> None:
        self.behaviour = behaviour
        self.receipts: list[Receipt] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, backlog=512).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        receipt = Receipt(
            number=len(self.receipts),
            at=time.monotonic(),
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
            peer_port=int(peer[1]) if peer else None,
        )
        self.receipts.append(receipt)
        try:
            response = await self.behaviour(receipt)
        except Exception as exc:  # a broken behaviour is a test bug: make it loud
            receipt.status = 599
            receipt.finished_at = time.monotonic()
            return reply(599, body=f"behaviour failed: {exc!r}")
        receipt.status = response.status
        receipt.finished_at = time.monotonic()
        return response

    # -- what arrived -------------------------------------------------------

    def on(self, path: str) -> list[Receipt]:
        return [r for r in self.receipts if r.path == path]

    def ids(self) -> set[str]:
        return {r.webhook_id for r in self.receipts}

    def succeeded_ids(self) -> set[str]:
        return {r.webhook_id for r in self.receipts if r.succeeded}

    def in_progress(self) -> list[Receipt]:
        return [r for r in self.receipts if r.in_progress]

    def for_event(self, event_id: str) -> list[Receipt]:
        return [r for r in self.receipts if r.webhook_id == event_id]


class ReceiverPool:
    """Starts receivers on demand; closes them all on exit."""

    def __init__(self) -> None:
        self._receivers: list[Receiver] = []
        # Set first on exit, so behaviours that wait (see :func:`pause`) end at once.
        self.closing = asyncio.Event()

    async def start(self, behaviour: Behaviour = always_ok) -> Receiver:
        receiver = Receiver(behaviour)
        self._receivers.append(receiver)
        return await receiver.start()

    async def __aenter__(self) -> ReceiverPool:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.closing.set()
        await asyncio.gather(*(r.close() for r in self._receivers), return_exceptions=True)


# -- behaviours -----------------------------------------------------------------


def scripted(*statuses: int, then: int = 200) -> Behaviour:
    """Answer each event's n-th request with ``statuses[n]``; ``then`` afterwards."""
    seen: defaultdict[str, int] = defaultdict(int)

    async def behave(receipt: Receipt) -> web.StreamResponse:
        n = seen[receipt.webhook_id]
        seen[receipt.webhook_id] += 1
        return reply(statuses[n] if n < len(statuses) else then)

    return behave


def slow(seconds: float, status: int = 200, *, cut_short: asyncio.Event | None = None) -> Behaviour:
    """Answer ``status`` after ``seconds`` (or as soon as ``cut_short`` is set)."""

    async def behave(_: Receipt) -> web.StreamResponse:
        await pause(seconds, cut_short)
        return reply(status)

    return behave


async def pause(seconds: float, cut_short: asyncio.Event | None = None) -> None:
    """Sleep ``seconds``, or less if ``cut_short`` is set meanwhile."""
    if cut_short is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cut_short.wait(), seconds)


# -- per-key order ----------------------------------------------------------------


def first_successes_by_key(receipts: Iterable[Receipt]) -> dict[str, list[int]]:
    """For each ``data.key``: the ``data.seq`` of each event's first successful receipt,
    in the order those receipts arrived."""
    seen: set[str] = set()
    order: defaultdict[str, list[int]] = defaultdict(list)
    for receipt in sorted(receipts, key=lambda r: r.at):
        if not receipt.succeeded or receipt.webhook_id in seen:
            continue
        seen.add(receipt.webhook_id)
        order[receipt.data["key"]].append(receipt.data["seq"])
    return dict(order)


def requests_by_key(receipts: Iterable[Receipt]) -> dict[str, list[int]]:
    """For each ``data.key``: the ``data.seq`` of every request, in arrival order."""
    order: defaultdict[str, list[int]] = defaultdict(list)
    for receipt in sorted(receipts, key=lambda r: r.at):
        order[receipt.data["key"]].append(receipt.data["seq"])
    return dict(order)


# -- waiting ----------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    *,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return it.

    Fails the test with ``message`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for: {text}")
        await asyncio.sleep(interval)
