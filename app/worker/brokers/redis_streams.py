"""Redis Streams over redis-py (asyncio): ``XADD``, optionally ``MAXLEN ~``.

Success is the entry ID ``XADD`` returns. A key of another type (``WRONGTYPE``)
or any other refusal fails the attempt with Redis's reply. The entry's fields
are ``id``, ``type``, ``key`` (absent when the event has none), ``body`` and
the ``webhook-*`` headers (and ``traceparent`` when the message has one).
The client does not retry on its own: a failed command is a failed attempt.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from app.worker.brokers.common import (
    PerUrl,
    TaskBoundConnection,
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


class RedisConnection(TaskBoundConnection[Redis]):
    waiting_for = "waiting for XADD"

    async def _open(self) -> Redis:
        return await _connect(self._link.url)

    async def _close(self, client: Redis) -> None:
        await client.aclose()

    async def _attempt(self, message: Message, started: float) -> SendResult:
        route = message.route
        assert route is not None
        client: Redis | None = None
        try:
            client = await self._link.client(message.timeout_s)
            entry = await client.xadd(
                route.name, fields(message), maxlen=route.maxlen, approximate=True
            )
        except Unavailable as exc:
            return failed_since(started, str(exc))
        except ResponseError as exc:
            return failed_since(started, f"Redis refused XADD to {route.name!r}: {exc}")
        except (TimeoutError, RedisTimeout):
            return timed_out(started, message, self.waiting_for)
        except (RedisConnectionError, OSError) as exc:
            if client is not None:
                await self._link.lost(client)
            return failed_since(started, self._link.hide(f"connection lost: {describe(exc)}"))
        except RedisError as exc:
            return failed_since(started, self._link.hide(describe(exc)))
        entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
        return accepted(elapsed_ms(started), f"entry {entry_id}")
