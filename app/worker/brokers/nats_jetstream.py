"""NATS JetStream over nats-py: publish and wait for the stream's ack.

Success is the JetStream publish ack, a duplicate ack included (``Nats-Msg-Id``
is the event ID, so JetStream drops a redelivery within its duplicate window).
A subject no stream takes, and a stream that refuses the message (at its
limits with ``discard: new``), fail the attempt with what the server said.
The client does not reconnect on its own: a lost connection fails attempts
and the next one connects anew, with backoff (:mod:`app.worker.brokers.link`).
"""

from __future__ import annotations

import time

import nats
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, OutboundBufferLimitError, StaleConnectionError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
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


async def _ignore(*_: object) -> None:
    """The client's callbacks: a lost connection shows in the next attempt."""


async def _connect(url: str) -> Client:
    return await nats.connect(
        url,
        name="eventrelay",
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=_ignore,
        disconnected_cb=_ignore,
        closed_cb=_ignore,
    )


def nats_sender(*, allow_private: bool) -> PerUrl[NatsConnection]:
    return PerUrl(lambda url: NatsConnection(url, allow_private=allow_private))


class NatsConnection:
    def __init__(self, url: str, *, allow_private: bool) -> None:
        self._link: Link[Client] = Link(
            url,
            allow_private=allow_private,
            open_client=lambda: _connect(url),
            close_client=lambda client: client.close(),
            usable=lambda client: client.is_connected,
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
        client: Client | None = None
        try:
            client = await self._link.client(message.timeout_s)
            remaining = max(0.001, message.timeout_s - (time.perf_counter() - started))
            ack = await client.jetstream().publish(
                route.name, message.payload, timeout=remaining, headers=headers
            )
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
            if client is not None:
                await self._link.lost(client)
            return failed_since(started, self._link.hide(f"connection lost: {describe(exc)}"))
        except NatsError as exc:
            return failed_since(started, self._link.hide(describe(exc)))
        note = f"stream {ack.stream} seq {ack.seq}" + (" (duplicate)" if ack.duplicate else "")
        return accepted(elapsed_ms(started), note)

    async def close(self) -> None:
        await self._link.close()
