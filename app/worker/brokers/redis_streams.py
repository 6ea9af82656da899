"""Redis Streams over redis-py (asyncio): ``XADD``, optionally ``MAXLEN ~``.

Success is the entry ID ``XADD`` returns. A key of another type (``WRONGTYPE``)
or any other refusal fails the attempt with Redis's reply. The entry's fields
are ``id``, ``type``, ``key`` (absent when the event has none), ``body`` and
the ``webhook-*`` headers (and ``traceparent`` when the message has one).
The client does not retry on its own: a failed command is a failed attempt,
and one that failed the whole pipeline drops the client (the next attempt
connects anew).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from app.worker.brokers.common import (
    BrokerConnection,
    PerUrl,
    elapsed_ms,
    failed_since,
    timed_out,
)
from app.worker.brokers.link import Unavailable, describe
from app.worker.protocol import Message, SendResult, accepted

FIELD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "traceparent")


async def _connect(url: str) -> Redis:
    # No socket timeout: the attempt's deadline bounds each command, and with one
    # redis-py writes every command under asyncio.wait_for, which on Python 3.11
    # can swallow that deadline's cancellation.
    client = Redis.from_url(
        url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=10, socket_timeout=None
    )
    try:
        await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client


def fields(message: Message) -> dict[Any, Any]:
    entry: dict[Any, Any] = {"id": message.event_id, "type": message.event_type}
    if message.key is not None:
        entry["key"] = message.key
    entry["body"] = message.payload
    for name in FIELD_HEADERS:
        value = message.headers.get(name)
        if value is not None:
            entry[name] = value
    return entry


def redis_sender(*, allow_private: bool) -> PerUrl[RedisConnection]:
    return RedisConnection.sender(allow_private=allow_private)


class RedisConnection(BrokerConnection[Redis]):
    r"""Sends the ``XADD``\ s of the attempts that start in one event-loop turn
    (the worker starts a cycle's claims together) as one pipeline, not a
    transaction: one round trip and one task for the lot, each attempt with its
    own reply. An attempt waits for its own future, which its deadline ends
    whatever the pipeline's task does (the client may not give up when
    cancelled: :class:`~app.worker.brokers.common.Deadlines`)."""

    waiting_for = "waiting for XADD"

    def __init__(self, url: str, *, allow_private: bool) -> None:
        super().__init__(url, allow_private=allow_private)
        self._queued: list[tuple[Message, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def _open(self) -> Redis:
        return await _connect(self._link.url)

    async def _close(self, client: Redis) -> None:
        await client.aclose()

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await super().close()

    async def send(self, message: Message) -> SendResult:
        started = time.perf_counter()
        route = message.route
        assert route is not None
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        deadline = loop.call_later(message.timeout_s, _time_out, reply)
        try:
            client = await self._link.client(message.timeout_s)
            if not reply.done():  # else timed out while connecting: not sent
                self._queued.append((message, reply))
                if len(self._queued) == 1:
                    loop.call_soon(self._pipeline, client)
            entry = await reply
        except Unavailable as exc:
            return failed_since(started, str(exc))
        except ResponseError as exc:
            return failed_since(started, f"Redis refused XADD to {route.name!r}: {exc}")
        except (TimeoutError, RedisTimeout):
            return timed_out(started, message, self.waiting_for)
        except (RedisConnectionError, OSError) as exc:
            return failed_since(started, self._link.hide(f"connection lost: {describe(exc)}"))
        except RedisError as exc:
            return failed_since(started, self._link.hide(describe(exc)))
        except Exception as exc:  # the client's own state broke (dropped in _xadd)
            return failed_since(started, self._link.hide(f"connection lost: {describe(exc)}"))
        finally:
            deadline.cancel()
        entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
        return accepted(elapsed_ms(started), f"entry {entry_id}")

    def _pipeline(self, client: Redis) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._xadd(client, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _xadd(self, client: Redis, batch: list[tuple[Message, asyncio.Future[Any]]]) -> None:
        pipeline = client.pipeline(transaction=False)
        for message, _ in batch:
            route = message.route
            assert route is not None
            pipeline.xadd(route.name, fields(message), maxlen=route.maxlen, approximate=True)
        try:
            replies = await pipeline.execute(raise_on_error=False)
        except BaseException as exc:
            for _, reply in batch:
                if not reply.done():
                    reply.set_exception(exc if isinstance(exc, Exception) else RedisError(exc))
            if not isinstance(exc, Exception):
                raise
            # Whatever failed the whole pipeline, a lost connection or an error
            # of the client's own (redis-py has let a transport's internals
            # leak when a connection dropped under a command), the next attempt
            # connects anew rather than trust this client again.
            await self._link.lost(client)
            return
        for (_, reply), answer in zip(batch, replies, strict=True):
            if reply.done():
                continue
            if isinstance(answer, Exception):
                reply.set_exception(answer)
            else:
                reply.set_result(answer)


def _time_out(reply: asyncio.Future[Any]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())
