"""NATS JetStream over nats-py: publish and wait for the stream's ack.

Success is the JetStream publish ack, a duplicate ack included (``Nats-Msg-Id``
is the event ID, so JetStream drops a redelivery within its duplicate window).
A subject no stream takes, and a stream that refuses the message (at its
limits with ``discard: new``), fail the attempt with what the server said.
The client does not reconnect on its own: a lost connection fails attempts
and the next one connects anew, with backoff (:mod:`app.worker.brokers.link`).
nats-py leaves a request whose connection closed unanswered, so a publish
also ends when its connection closes rather than at its deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.errors import (
    ConnectionClosedError,
    NoServersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from app.worker.brokers.common import (
    Deadlines,
    PerUrl,
    content_type,
    elapsed_ms,
    failed_since,
    message_headers,
    timed_out,
)
from app.worker.brokers.link import Link, Unavailable, describe
from app.worker.protocol import Message, SendResult, accepted


@dataclass(frozen=True, slots=True)
class Connected:
    """A client and a future that is done once its connection has closed."""

    client: Client
    closed: asyncio.Future[None]


async def _connect(url: str) -> Connected:
    """Connect once. nats-py retries a server that refuses for ever unless
    ``max_reconnect_attempts`` is positive (then it tries twice and gives up with
    NoServersError); the reason it was given is raised instead."""
    closed = asyncio.get_running_loop().create_future()
    last_error: Exception | None = None

    async def on_error(exc: Exception) -> None:
        nonlocal last_error
        last_error = exc

    async def on_closed() -> None:
        if not closed.done():
            closed.set_result(None)

    try:
        client = await nats.connect(
            url,
            name="eventrelay",
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=on_error,
            disconnected_cb=on_closed,
            closed_cb=on_closed,
        )
    except NoServersError:
        if last_error is not None:
            raise last_error from None
        raise
    return Connected(client, closed)


async def _unless_closed(connected: Connected, publish: asyncio.Future[PubAck]) -> PubAck:
    """``publish``'s ack, or ConnectionClosedError as soon as the connection closes."""
    try:
        await asyncio.wait((publish, connected.closed), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        publish.cancel()
        raise
    if not publish.done():
        publish.cancel()
        raise ConnectionClosedError
    return publish.result()


def nats_sender(*, allow_private: bool) -> PerUrl[NatsConnection]:
    return PerUrl(lambda url: NatsConnection(url, allow_private=allow_private))


class NatsConnection:
    def __init__(self, url: str, *, allow_private: bool) -> None:
        self._link: Link[Connected] = Link(
            url,
            allow_private=allow_private,
            open_client=lambda: _connect(url),
            close_client=lambda connected: connected.client.close(),
            usable=lambda connected: connected.client.is_connected,
        )
        self._deadlines = Deadlines()

    async def send(self, message: Message) -> SendResult:
        started = time.perf_counter()
        attempt = self._publish(message, started)
        return await self._deadlines.run(attempt, started, message, "waiting for the JetStream ack")

    async def _publish(self, message: Message, started: float) -> SendResult:
        route = message.route
        assert route is not None
        headers = message_headers(message)
        headers["Content-Type"] = content_type(message)
        headers["Nats-Msg-Id"] = message.event_id
        connected: Connected | None = None
        try:
            connected = await self._link.client(message.timeout_s)
            remaining = max(0.001, message.timeout_s - (time.perf_counter() - started))
            publish = connected.client.jetstream().publish(
                route.name, message.payload, timeout=remaining, headers=headers
            )
            ack = await _unless_closed(connected, asyncio.ensure_future(publish))
        except Unavailable as exc:
            return failed_since(started, str(exc))
        except NoStreamResponseError:
            return failed_since(started, f"no JetStream stream takes subject {route.name!r}")
        except APIError as exc:
            return failed_since(
                started, f"JetStream refused the message: {exc.description} (code {exc.err_code})"
            )
        except (NatsTimeout, TimeoutError):
            return timed_out(started, message, "waiting for the JetStream ack")
        except (
            ConnectionClosedError,
            StaleConnectionError,
            OutboundBufferLimitError,
            OSError,
        ) as exc:
            if connected is not None:
                await self._link.lost(connected)
            return failed_since(started, self._link.hide(f"connection lost: {describe(exc)}"))
        except NatsError as exc:
            return failed_since(started, self._link.hide(describe(exc)))
        note = f"stream {ack.stream} seq {ack.seq}" + (" (duplicate)" if ack.duplicate else "")
        return accepted(elapsed_ms(started), note)

    async def close(self) -> None:
        await self._link.close()
