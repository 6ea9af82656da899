"""NATS JetStream over nats-py: publish and wait for the stream's ack.

Success is the JetStream publish ack, a duplicate ack included (``Nats-Msg-Id``
is the event ID, so JetStream drops a redelivery within its duplicate window).
A subject no stream takes, and a stream that refuses the message (at its
limits with ``discard: new``), fail the attempt with what the server said.
The client does not reconnect on its own: a lost connection fails attempts
and the next one connects anew, with backoff (:mod:`app.worker.brokers.link`).
nats-py leaves a publish whose connection closed unanswered, so a publish
also ends when its connection closes rather than at its deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionClosedError,
    NoServersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import Header, PubAck
from nats.js.errors import APIError, NoStreamResponseError

from app.worker.brokers.common import (
    JSON,
    BrokerConnection,
    Overdue,
    PerUrl,
    Watched,
    elapsed_ms,
    failed_since,
    message_headers,
    timed_out,
)
from app.worker.brokers.link import Unavailable, describe
from app.worker.protocol import Message, SendResult, accepted

STATUS = Header.STATUS
NO_RESPONDERS = "503"  # no stream takes the subject


class Connected:
    """A client and the publishes waiting for their JetStream ack.

    An ack comes back on a subscription of the connection's own (``<inbox>.*``,
    one token per publish), the request-reply pattern of ``js.publish`` without
    its per-request ``wait_for`` and random token. (``js.publish_async`` saves
    those too, but its reply handler leaves a publish the stream refused
    unanswered until its deadline, as of nats-py 2.16.) Every waiting publish
    fails with ConnectionClosedError as soon as the connection closes (nats-py
    leaves them unanswered).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._inbox = client.new_inbox() + "."
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._closed = False

    async def subscribe(self) -> None:
        await self.client.subscribe(self._inbox + "*", cb=self._answer)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> str:
        """Publish; the returned token's answer is :meth:`ack`'s to wait for."""
        if self._closed:
            raise ConnectionClosedError
        token = str(next(self._tokens))
        self._waiting[token] = asyncio.get_running_loop().create_future()
        try:
            await self.client.publish(subject, payload, reply=self._inbox + token, headers=headers)
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return token

    async def ack(self, token: str) -> PubAck:
        """The stream's ack of a publish, or the error it answered instead (built
        from the fields read here: ``PubAck.from_response`` walks the dataclass's
        fields for every ack)."""
        try:
            answer = await self._waiting[token]
        finally:
            self._waiting.pop(token, None)
        if answer.headers and answer.headers.get(STATUS) == NO_RESPONDERS:
            raise NoStreamResponseError
        reply = orjson.loads(answer.data)
        if "error" in reply:
            raise APIError.from_error(reply["error"])
        return PubAck(reply["stream"], reply["seq"], duplicate=reply.get("duplicate"))

    def forget(self, token: str) -> None:
        self._waiting.pop(token, None)

    def fail_waiting(self) -> None:
        self._closed = True
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ConnectionClosedError())

    async def _answer(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._inbox) :])
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)


async def _connect(url: str) -> Connected:
    """Connect once. nats-py retries a server that refuses for ever unless
    ``max_reconnect_attempts`` is positive (then it tries twice and gives up with
    NoServersError); the reason it was given is raised instead."""
    connected: Connected | None = None
    last_error: Exception | None = None

    async def on_error(exc: Exception) -> None:
        nonlocal last_error
        last_error = exc

    async def on_closed() -> None:
        if connected is not None:
            connected.fail_waiting()

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
    connected = Connected(client)
    try:
        await connected.subscribe()
    except BaseException:
        await client.close()
        raise
    return connected


def nats_sender(*, allow_private: bool) -> PerUrl[NatsConnection]:
    return NatsConnection.sender(allow_private=allow_private)


class NatsConnection(BrokerConnection[Connected]):
    """No task and no ``wait_for`` per publish: the attempt runs under the
    connection's :class:`Overdue` watch, which cancels it at its deadline. The
    client cannot swallow that cancellation where it matters, since the ack is
    a plain future awaited here; a publish that returns after the deadline
    passed is timed out at once."""

    waiting_for = "waiting for the JetStream ack"

    def __init__(self, url: str, *, allow_private: bool) -> None:
        super().__init__(url, allow_private=allow_private)
        self._overdue = Overdue()

    async def _open(self) -> Connected:
        return await _connect(self._link.url)

    async def _close(self, connected: Connected) -> None:
        await connected.client.close()

    def _usable(self, connected: Connected) -> bool:
        return connected.client.is_connected

    async def send(self, message: Message) -> SendResult:
        started = time.perf_counter()
        watched = self._overdue.watch(message.timeout_s)
        try:
            return await self._publish(message, started, watched)
        except asyncio.CancelledError:
            if watched.timed_out():
                return timed_out(started, message, self.waiting_for)
            raise
        finally:
            self._overdue.end(watched)

    async def _publish(self, message: Message, started: float, watched: Watched) -> SendResult:
        route = message.route
        assert route is not None
        headers = message_headers(message)
        headers["Content-Type"] = message.headers.get("content-type", JSON)
        headers["Nats-Msg-Id"] = message.event_id
        connected: Connected | None = None
        try:
            connected = await self._link.client(message.timeout_s)
            token = await connected.publish(route.name, message.payload, headers)
            if watched.passed_unseen():  # a cancellation the client swallowed
                connected.forget(token)
                return timed_out(started, message, self.waiting_for)
            answer = await connected.ack(token)
        except Unavailable as exc:
            return failed_since(started, str(exc))
        except NoStreamResponseError:
            return failed_since(started, f"no JetStream stream takes subject {route.name!r}")
        except APIError as exc:
            return failed_since(
                started, f"JetStream refused the message: {exc.description} (code {exc.err_code})"
            )
        except (
            ConnectionClosedError,
            StaleConnectionError,
            OutboundBufferLimitError,
            OSError,
        ) as exc:
            if connected is not None:
                await self._link.lost(connected)
            return failed_since(started, self._link.hide(f"connection lost: {describe(exc)}"))
        except NatsTimeout:
            return timed_out(started, message, self.waiting_for)
        except NatsError as exc:
            return failed_since(started, self._link.hide(describe(exc)))
        note = f"stream {answer.stream} seq {answer.seq}" + (
            " (duplicate)" if answer.duplicate else ""
        )
        return accepted(elapsed_ms(started), note)
