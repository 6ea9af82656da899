"""RabbitMQ over aio-pika: publisher confirms, ``mandatory``, persistent messages.

Success is the broker's confirm (``basic.ack``). A message the broker returns
as unroutable (``mandatory``) or refuses (``basic.nack``, e.g. a queue at its
length limit with ``x-overflow: reject-publish``) fails the attempt with what
the broker said; so does an exchange that does not exist (checked on a
channel of its own before the first publish to it on a channel). ``message_id`` is the event ID
and the ``webhook-*`` headers travel as AMQP headers.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import (
    AMQPChannelError,
    AMQPError,
    ChannelInvalidStateError,
    DeliveryError,
)

from app.worker.brokers.common import (
    PerUrl,
    TaskBoundConnection,
    content_type,
    elapsed_ms,
    failed_since,
    message_headers,
    timed_out,
)
from app.worker.brokers.link import Unavailable, describe
from app.worker.protocol import Message, SendResult, accepted


def rabbitmq_sender(*, allow_private: bool) -> PerUrl[RabbitMQConnection]:
    return RabbitMQConnection.sender(allow_private=allow_private)


class RabbitMQConnection(TaskBoundConnection[AbstractConnection]):
    waiting_for = "waiting for the broker's confirm"

    def __init__(self, url: str, *, allow_private: bool) -> None:
        super().__init__(url, allow_private=allow_private)
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._channel_lock = asyncio.Lock()

    async def _open(self) -> AbstractConnection:
        return await aio_pika.connect(self._link.url)

    async def _close(self, connection: AbstractConnection) -> None:
        await connection.close()

    def _usable(self, connection: AbstractConnection) -> bool:
        return not connection.is_closed

    async def _attempt(self, message: Message, started: float) -> SendResult:
        route = message.route
        assert route is not None
        connection: AbstractConnection | None = None
        try:
            connection = await self._link.client(message.timeout_s)
            exchange = await self._exchange(connection, route.exchange)
            await exchange.publish(
                aio_pika.Message(
                    message.payload,
                    headers=dict(message_headers(message)),
                    content_type=content_type(message),
                    message_id=message.event_id,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=route.name,
                mandatory=True,
            )
        except Unavailable as exc:
            return failed_since(started, str(exc))
        except DeliveryError as exc:
            return failed_since(started, self._link.hide(_refusal(exc, route.exchange, route.name)))
        except (AMQPChannelError, ChannelInvalidStateError) as exc:
            # A closed channel is replaced at the next attempt (``_exchange``).
            return failed_since(started, self._link.hide(f"the broker closed the channel: {exc}"))
        except TimeoutError:
            return timed_out(started, message, self.waiting_for)
        except (AMQPError, OSError, ConnectionError, RuntimeError) as exc:
            if connection is not None:
                await self._lost(connection)
            return failed_since(started, self._link.hide(f"connection lost: {describe(exc)}"))
        return accepted(elapsed_ms(started), "confirmed")

    async def _exchange(self, connection: AbstractConnection, name: str) -> AbstractExchange:
        channel = self._channel
        if channel is None or channel.is_closed:
            async with self._channel_lock:
                channel = self._channel
                if channel is None or channel.is_closed:
                    channel = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    self._channel, self._exchanges = channel, {}
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = channel.default_exchange
            if name:
                await _check_exchange(connection, name)
                exchange = await channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def _lost(self, connection: AbstractConnection) -> None:
        self._channel = None
        await self._link.lost(connection)

    async def close(self) -> None:
        self._channel = None
        await super().close()


async def _check_exchange(connection: AbstractConnection, name: str) -> None:
    """The exchange exists (else the broker's 404 is raised). Checked on a channel
    of its own: publishing to a missing exchange would close the shared channel
    under every other publish in flight."""
    probe = await connection.channel(publisher_confirms=False)
    try:
        await probe.declare_exchange(name, passive=True)
    finally:
        if not probe.is_closed:
            await probe.close()


def _refusal(exc: DeliveryError, exchange: str, routing_key: str) -> str:
    frame = exc.frame
    code, text = getattr(frame, "reply_code", None), getattr(frame, "reply_text", None)
    if code is not None:
        return (
            f"the broker returned the message as unroutable ({code} {text}): "
            f"exchange {exchange!r}, routing key {routing_key!r}"
        )
    return (
        "the broker refused the message (basic.nack): "
        f"exchange {exchange!r}, routing key {routing_key!r}"
    )
