"""Fakes for the worker's unit tests: subscriptions, claimed deliveries and a
:class:`~app.worker.protocol.Sender` that answers from a script, no network."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from app.domain.events import rfc3339
from app.store.events import StoredEvent
from app.store.sealed import Sealed
from app.store.subscriptions import Subscription
from app.store.work import Claimed
from app.worker.lines import Ready
from app.worker.protocol import Message, SendResult, delivered

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
_SEQ = itertools.count(1)


def subscription(sid: str = "sub_1", **fields: Any) -> Subscription:
    now = datetime.now(UTC)
    base = Subscription(
        id=sid,
        url=f"http://receiver.test/{sid}",
        description=None,
        event_types=["*"],
        secret=Sealed.plain(SECRET),
        previous_secret=None,
        previous_secret_expires_at=None,
        headers={},
        ordering="none",
        on_dead_letter="skip",
        retry_schedule=None,
        timeout_ms=None,
        max_in_flight=32,
        rate_limit_per_second=None,
        status="active",
        disabled_reason=None,
        consecutive_failures=0,
        failing_since=None,
        circuit_open_until=None,
        created_at=now,
        updated_at=now,
    )
    return replace(base, **fields)


def ready(sid: str = "sub_1", *, attempts: int = 0) -> Ready:
    seq = next(_SEQ)
    event = StoredEvent(
        seq=seq,
        id=f"evt_{seq}",
        type="order.created",
        key=None,
        data_json=f'{{"n": {seq}}}',
        schema_version=None,
        occurred_at=None,
        received_at=datetime.now(UTC),
    )
    claimed = Claimed(seq, f"dlv_{seq}", event.id, sid, None, attempts, attempts)
    body = f'{{"id":"{event.id}","timestamp":"{rfc3339(event.received_at)}"}}'.encode()
    return Ready(claimed, event, body)


@dataclass
class Sent:
    destination: str
    message: Message


@dataclass
class FakeSender:
    """Answers every message with ``answer(message)`` (200 by default); records
    what it was sent; ``gate``, when given, holds each send until it is set."""

    answer: Callable[[Message], SendResult] = lambda _: delivered(3)
    gate: asyncio.Event | None = None
    sent: list[Sent] = field(default_factory=list)
    connections: dict[str, FakeConnection] = field(default_factory=dict)
    closed: bool = False

    def connection(self, destination: str) -> FakeConnection:
        if destination not in self.connections:
            self.connections[destination] = FakeConnection(self, destination)
        return self.connections[destination]

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeConnection:
    sender: FakeSender
    destination: str

    async def send(self, message: Message) -> SendResult:
        self.sender.sent.append(Sent(self.destination, message))
        if self.sender.gate is not None:
            await self.sender.gate.wait()
        return self.sender.answer(message)
