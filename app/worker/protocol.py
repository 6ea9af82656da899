"""The seam between the attempt step and a destination: the ``Sender`` protocol.

A :class:`Sender` knows one kind of destination (HTTP webhooks, or a message
broker) and keeps one :class:`Connection` per destination URL, opened on first
use and closed with the sender. The attempt step hands a
connection one signed :class:`Message` at a time and gets back a
:class:`SendResult`, whose outcome is one of four kinds (the helpers below
build them, so a sender that does not speak HTTP need not know its codes):

- delivered — the destination took the message (a 2xx, or a broker's
  confirm: :func:`accepted`);
- retry after — it asked to be tried again later (``Retry-After``);
- failed, with a reason — no answer, or a refusal that may pass;
- gone — the destination no longer exists: the delivery is dead-lettered and
  the subscription disabled.

The retry decision itself is :func:`app.domain.retry.decide`, which reads
the outcome; senders only report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from app.domain.retry import Outcome

GONE = 410
TOO_MANY_REQUESTS = 429


@dataclass(frozen=True, slots=True)
class Route:
    """Where a broker message goes: the rendered routing key, subject or stream,
    and what else the destination names (a RabbitMQ exchange, a Redis ``MAXLEN``)."""

    name: str
    exchange: str = ""
    maxlen: int | None = None


@dataclass(slots=True)
class Message:
    """One signed event as it goes to a destination (``route`` for brokers only).
    Not frozen, like :class:`~app.store.work.Completion`: one per attempt."""

    payload: bytes
    headers: Mapping[str, str]
    timeout_s: float
    event_id: str = ""
    event_type: str = ""
    key: str | None = None
    route: Route | None = None


@dataclass(slots=True)
class SendResult:
    """What one attempt got back, and how long it took (not frozen: one per attempt)."""

    outcome: Outcome
    duration_ms: int
    response_body: str | None = None


class Connection(Protocol):
    """A destination, ready to take messages (shared by concurrent attempts)."""

    async def send(self, message: Message) -> SendResult: ...


class Sender(Protocol):
    """One kind of destination: a connection per destination, closed together."""

    def connection(self, destination: str) -> Connection: ...

    async def close(self) -> None: ...


SenderFactory = Callable[[], Sender]
"""Builds the worker's sender inside its event loop, when the worker starts."""


# Outcomes are frozen: the common ones are built once and shared by every attempt.
_ACCEPTED = Outcome(accepted=True)
_BY_STATUS: dict[int, Outcome] = {}


def answered(status_code: int, retry_after: str | None = None) -> Outcome:
    """The outcome of an HTTP answer (shared between attempts when it has no ``Retry-After``)."""
    if retry_after is not None:
        return Outcome(status_code=status_code, retry_after=retry_after)
    outcome = _BY_STATUS.get(status_code)
    if outcome is None:
        outcome = Outcome(status_code=status_code)
        if 100 <= status_code < 600:
            _BY_STATUS[status_code] = outcome
    return outcome


def delivered(duration_ms: int, status_code: int = 200, body: str | None = None) -> SendResult:
    return SendResult(answered(status_code), duration_ms, body)


def accepted(duration_ms: int, note: str | None = None) -> SendResult:
    """A broker took the message (its confirm or ack); ``note`` says what it answered."""
    return SendResult(_ACCEPTED, duration_ms, note)


def retry_after(
    duration_ms: int, seconds: float, status_code: int = TOO_MANY_REQUESTS, body: str | None = None
) -> SendResult:
    """The destination asked to be tried again in ``seconds`` (at the earliest)."""
    hint = str(max(0, round(seconds)))
    return SendResult(Outcome(status_code=status_code, retry_after=hint), duration_ms, body)


def failed(duration_ms: int, reason: str) -> SendResult:
    return SendResult(Outcome(error=reason), duration_ms, None)


def gone(duration_ms: int, body: str | None = None) -> SendResult:
    return SendResult(Outcome(status_code=GONE), duration_ms, body)
