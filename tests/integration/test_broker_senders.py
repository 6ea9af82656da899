"""The broker senders against the real brokers: what success is, what fails an
attempt and with which reason, and that a broker going away never breaks the
sender (API-v2 "Destinations")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.client import Pipeline

from app.domain.formats import STRUCTURED
from app.worker.config import WorkerConfig
from app.worker.destinations import DestinationSender, destination_senders
from app.worker.protocol import Message, Route, SendResult
from tests.brokers import (
    AMQP_URL,
    DISCARD_NEW,
    NATS_URL,
    REDIS_URL,
    TcpProxy,
    nats_stream,
    proxy_to,
    rabbit_queue,
    redis_client,
    unique,
    with_address,
)
from tests.e2e.receivers import wait_until

HEADERS = {
    "content-type": "application/json",
    "webhook-id": "evt_1",
    "webhook-timestamp": "1700000000",
    "webhook-signature": "v1,c2lnbmF0dXJl",
    "user-agent": "eventrelay/test",
    "X-Team": "billing",
}


@pytest.fixture
async def sender() -> AsyncIterator[DestinationSender]:
    config = WorkerConfig(retry_schedule=(1.0,), timeout_ms=5000, allow_private_targets=True)
    built = destination_senders(config)()
    assert isinstance(built, DestinationSender)
    try:
        yield built
    finally:
        await built.close()


def message(
    route: Route,
    *,
    event_id: str = "evt_1",
    key: str | None = "k1",
    payload: bytes = b'{"id":"evt_1"}',
    timeout_s: float = 5.0,
    content_type: str = "application/json",
) -> Message:
    headers = HEADERS | {"webhook-id": event_id, "content-type": content_type}
    return Message(payload, headers, timeout_s, event_id, "order.created", key, route)


def assert_accepted(result: SendResult) -> None:
    assert result.outcome.accepted, result.outcome.error
    assert result.outcome.error is None


def assert_failed(result: SendResult, *fragments: str) -> str:
    assert not result.outcome.accepted
    error = result.outcome.error or ""
    for fragment in fragments:
        assert fragment in error, error
    return error


async def until_accepted(send: object, deadline: float = 15.0) -> SendResult:
    """Send again (as retries would) until the broker takes it."""
    assert callable(send)
    end = time.monotonic() + deadline
    while True:
        result: SendResult = await send()
        if result.outcome.accepted or time.monotonic() > end:
            return result
        await asyncio.sleep(0.1)


# -- RabbitMQ -------------------------------------------------------------------


async def test_rabbitmq_confirmed_persistent_with_id_and_headers(sender: DestinationSender) -> None:
    async with rabbit_queue() as rabbit:
        route = Route("orders.created", exchange=rabbit.exchange)
        result = await sender.connection(rabbit.url).send(message(route, event_id="evt_a"))
        assert_accepted(result)
        (got,) = await rabbit.drain(1)
    assert got.body == b'{"id":"evt_1"}'
    assert got.message_id == "evt_a"
    assert got.delivery_mode.value == 2  # persistent
    assert got.content_type == "application/json"
    assert got.routing_key == "orders.created"
    assert got.headers["webhook-id"] == "evt_a"
    assert got.headers["webhook-signature"] == "v1,c2lnbmF0dXJl"
    assert got.headers["X-Team"] == "billing"
    assert "user-agent" not in got.headers


async def test_rabbitmq_unroutable_message_fails_the_attempt(sender: DestinationSender) -> None:
    async with rabbit_queue() as rabbit:
        connection = sender.connection(rabbit.url)
        result = await connection.send(message(Route(unique("nowhere"), exchange="")))
        assert_failed(result, "unroutable", "NO_ROUTE")
        # The channel is still good for the next message.
        assert_accepted(await connection.send(message(Route("a.b", exchange=rabbit.exchange))))


async def test_rabbitmq_missing_exchange_fails_with_the_brokers_reason(
    sender: DestinationSender,
) -> None:
    async with rabbit_queue() as rabbit:
        connection = sender.connection(rabbit.url)
        missing = unique("missing")
        result = await connection.send(message(Route("k", exchange=missing)))
        assert_failed(result, "NOT_FOUND", missing)
        assert_accepted(await connection.send(message(Route("k", exchange=rabbit.exchange))))


async def test_rabbitmq_nack_at_a_full_queue_fails_the_attempt(sender: DestinationSender) -> None:
    limits = {"x-max-length": 1, "x-overflow": "reject-publish"}
    async with rabbit_queue(limits) as rabbit:
        connection = sender.connection(rabbit.url)
        route = Route("k", exchange=rabbit.exchange)
        assert_accepted(await connection.send(message(route)))
        assert_failed(await connection.send(message(route)), "basic.nack")
        await rabbit.drain(1)
        assert_accepted(await connection.send(message(route)))


async def test_rabbitmq_bad_credentials_fail_without_showing_the_password(
    sender: DestinationSender,
) -> None:
    async with rabbit_queue() as rabbit:
        url = with_address(rabbit.url.replace("guest:guest", "guest:s3cr3t-pw"), "127.0.0.1", 5672)
        result = await sender.connection(url).send(message(Route("k", exchange=rabbit.exchange)))
    error = assert_failed(result, "cannot connect")
    assert "s3cr3t-pw" not in error


async def test_rabbitmq_gone_and_back_fails_attempts_then_recovers(
    sender: DestinationSender,
) -> None:
    async with rabbit_queue() as rabbit, proxy_to(AMQP_URL) as proxy:
        await _gone_and_back(
            sender,
            proxy,
            with_address(AMQP_URL, "127.0.0.1", proxy.port),
            Route("k", exchange=rabbit.exchange),
        )
        assert len(await rabbit.drain(2)) == 2


async def _gone_and_back(
    sender: DestinationSender, proxy: TcpProxy, url: str, route: Route
) -> None:
    connection = sender.connection(url)
    assert_accepted(await connection.send(message(route, event_id="evt_before")))
    await proxy.cut()
    # While it is away, attempts keep failing at once, with the reason (no hang
    # until the deadline, no crash).
    for _ in range(3):
        started = time.monotonic()
        failed = await connection.send(message(route, timeout_s=5.0))
        error = assert_failed(failed)
        assert "timed out" not in error, error
        assert time.monotonic() - started < 2.0, f"the attempt took its deadline: {error}"
    assert "cannot connect to the broker" in error, error
    await proxy.restore()
    back = await until_accepted(lambda: connection.send(message(route, event_id="evt_after")))
    assert_accepted(back)
    assert proxy.connections >= 2, "the sender connected again"


async def _silent_then_back(
    sender: DestinationSender, proxy: TcpProxy, url: str, route: Route
) -> None:
    """A broker that goes silent (nothing answers, nothing closes) fails the
    attempt at its deadline; once it speaks again, attempts succeed."""
    connection = sender.connection(url)
    assert_accepted(await connection.send(message(route, event_id="evt_before")))
    proxy.stall()
    started = time.monotonic()
    silent = await asyncio.wait_for(connection.send(message(route, timeout_s=0.5)), 10)
    assert_failed(silent, "timed out after 500 ms")
    assert time.monotonic() - started < 1.5, "the attempt outlived its deadline"
    proxy.resume()
    assert_accepted(await until_accepted(lambda: connection.send(message(route))))


async def test_rabbitmq_silent_fails_the_attempt_by_its_deadline(
    sender: DestinationSender,
) -> None:
    async with rabbit_queue() as rabbit, proxy_to(AMQP_URL) as proxy:
        url = with_address(AMQP_URL, "127.0.0.1", proxy.port)
        await _silent_then_back(sender, proxy, url, Route("k", exchange=rabbit.exchange))


# -- NATS JetStream -------------------------------------------------------------


async def test_nats_ack_with_msg_id_and_duplicate_is_success(sender: DestinationSender) -> None:
    async with nats_stream() as stream:
        connection = sender.connection(stream.url)
        route = Route(f"{stream.prefix}.order.created")
        first = await connection.send(message(route, event_id="evt_n1", content_type=STRUCTURED))
        assert_accepted(first)
        again = await connection.send(message(route, event_id="evt_n1"))
        assert_accepted(again)
        assert again.response_body is not None
        assert "duplicate" in again.response_body
        (got,) = await stream.messages()
    assert got.data == b'{"id":"evt_1"}'
    assert got.headers["Nats-Msg-Id"] == "evt_n1"
    assert got.headers["webhook-id"] == "evt_n1"
    assert got.headers["webhook-signature"] == "v1,c2lnbmF0dXJl"
    assert got.headers["Content-Type"] == STRUCTURED


async def test_nats_subject_without_a_stream_fails(sender: DestinationSender) -> None:
    async with nats_stream() as stream:
        subject = f"{unique('nostream')}.x"
        result = await sender.connection(stream.url).send(message(Route(subject)))
    assert_failed(result, "no JetStream stream", subject)


async def test_nats_stream_full_with_discard_new_fails_with_the_servers_reason(
    sender: DestinationSender,
) -> None:
    async with nats_stream(max_msgs=1, discard=DISCARD_NEW) as stream:
        connection = sender.connection(stream.url)
        route = Route(f"{stream.prefix}.x")
        assert_accepted(await connection.send(message(route, event_id="evt_1")))
        error = assert_failed(await connection.send(message(route, event_id="evt_2")))
        assert "JetStream refused" in error
        assert "maximum messages" in error.lower(), error


async def test_nats_gone_and_back_fails_attempts_then_recovers(sender: DestinationSender) -> None:
    async with nats_stream() as stream, proxy_to(NATS_URL) as proxy:
        url = with_address(NATS_URL, "127.0.0.1", proxy.port)
        await _gone_and_back(sender, proxy, url, Route(f"{stream.prefix}.x"))
        assert len(await stream.messages()) == 2


async def test_nats_publish_in_flight_fails_at_once_when_the_connection_drops(
    sender: DestinationSender,
) -> None:
    """The client does not answer a request whose connection closed; the attempt
    must not wait for its deadline (the line's head would wait that long)."""
    async with nats_stream() as stream, proxy_to(NATS_URL) as proxy:
        connection = sender.connection(with_address(NATS_URL, "127.0.0.1", proxy.port))
        route = Route(f"{stream.prefix}.x")
        assert_accepted(await connection.send(message(route, event_id="evt_d0")))
        proxy.stall()
        held = proxy.sent
        sending = asyncio.create_task(
            connection.send(message(route, event_id="evt_d1", timeout_s=10.0))
        )
        await wait_until(lambda: proxy.sent > held, 5.0, message="the publish sent")
        cut_at = time.monotonic()
        await proxy.cut()
        result = await asyncio.wait_for(sending, 15)
        took = time.monotonic() - cut_at
    assert_failed(result, "connection lost")
    assert took < 2.0, f"the attempt ended {took:.1f} s after the connection dropped"


# -- Redis Streams --------------------------------------------------------------


async def test_redis_xadd_fields_and_maxlen(sender: DestinationSender) -> None:
    async with redis_client() as (client, keys):
        stream = unique("stream")
        keys.append(stream)
        connection = sender.connection(REDIS_URL)
        for n in range(300):
            msg = message(Route(stream, maxlen=5), event_id=f"evt_{n}", key="k" if n else None)
            assert_accepted(await connection.send(msg))
        entries = await client.xrange(stream)
    assert len(entries) < 300, "MAXLEN ~ trimmed the stream (whole macro nodes)"
    _, last = entries[-1]
    assert last == {
        b"id": b"evt_299",
        b"type": b"order.created",
        b"key": b"k",
        b"body": b'{"id":"evt_1"}',
        b"webhook-id": b"evt_299",
        b"webhook-timestamp": b"1700000000",
        b"webhook-signature": b"v1,c2lnbmF0dXJl",
    }


async def test_redis_entry_without_a_key_has_no_key_field(sender: DestinationSender) -> None:
    async with redis_client() as (client, keys):
        stream = unique("stream")
        keys.append(stream)
        result = await sender.connection(REDIS_URL).send(message(Route(stream), key=None))
        assert_accepted(result)
        assert result.response_body is not None
        assert result.response_body.startswith("entry ")
        ((_, entry),) = await client.xrange(stream)
    assert b"key" not in entry


async def test_redis_key_of_another_type_fails_with_wrongtype(sender: DestinationSender) -> None:
    async with redis_client() as (client, keys):
        name = unique("string")
        keys.append(name)
        await client.set(name, "not a stream")
        result = await sender.connection(REDIS_URL).send(message(Route(name)))
    assert_failed(result, "WRONGTYPE", name)


async def test_redis_an_echoing_peer_is_not_taken_for_redis(sender: DestinationSender) -> None:
    """A peer that sends back what it is sent (as a connection to a port with no
    listener does, when the kernel picks that port as its own end) is no Redis:
    the connection fails, and no XADD is taken as done."""
    echoed: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            echoed.append(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        url = with_address(REDIS_URL, "127.0.0.1", port)
        result = await sender.connection(url).send(message(Route("stream")))
    finally:
        server.close()
    assert_failed(result, "cannot connect to the broker")
    assert echoed, "it was asked"


async def test_redis_a_client_error_fails_the_attempt_and_the_next_connects_anew(
    sender: DestinationSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py has let a transport's internals leak (an AttributeError, a
    TypeError) when a connection dropped under a command: that fails the
    attempt, with what happened, and the client is not trusted again."""
    async with redis_client() as (client, keys), proxy_to(REDIS_URL) as proxy:
        stream = unique("stream")
        keys.append(stream)
        connection = sender.connection(with_address(REDIS_URL, "127.0.0.1", proxy.port))
        assert_accepted(await connection.send(message(Route(stream))))
        execute = Pipeline.execute

        async def broken(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
            monkeypatch.setattr(Pipeline, "execute", execute)
            raise AttributeError("'NoneType' object has no attribute 'feed'")

        monkeypatch.setattr(Pipeline, "execute", broken)
        assert_failed(await connection.send(message(Route(stream))), "connection lost")
        assert_accepted(await connection.send(message(Route(stream))))
        assert await client.xlen(stream) == 2
    assert proxy.connections == 2, "the next attempt connected anew"


async def test_redis_gone_and_back_fails_attempts_then_recovers(
    sender: DestinationSender,
) -> None:
    async with redis_client() as (client, keys), proxy_to(REDIS_URL) as proxy:
        stream = unique("stream")
        keys.append(stream)
        url = with_address(REDIS_URL, "127.0.0.1", proxy.port)
        await _gone_and_back(sender, proxy, url, Route(stream))
        assert await client.xlen(stream) == 2


async def test_redis_silent_fails_the_attempt_by_its_deadline(sender: DestinationSender) -> None:
    async with redis_client() as (_, keys), proxy_to(REDIS_URL) as proxy:
        stream = unique("stream")
        keys.append(stream)
        url = with_address(REDIS_URL, "127.0.0.1", proxy.port)
        await _silent_then_back(sender, proxy, url, Route(stream))


async def test_one_connection_per_url(sender: DestinationSender) -> None:
    async with redis_client() as (_, keys), proxy_to(REDIS_URL) as proxy:
        stream = unique("stream")
        keys.append(stream)
        url = with_address(REDIS_URL, "127.0.0.1", proxy.port)
        sends = [sender.connection(url).send(message(Route(stream))) for _ in range(20)]
        for result in await asyncio.gather(*sends):
            assert_accepted(result)
    assert sender.connection(url) is sender.connection(url)


async def test_a_refused_broker_host_fails_without_connecting() -> None:
    config = WorkerConfig(retry_schedule=(1.0,), timeout_ms=5000, allow_private_targets=False)
    strict = destination_senders(config)()
    try:
        async with redis_client() as (_, keys), proxy_to(REDIS_URL) as proxy:
            keys.append("never")
            url = with_address(REDIS_URL, "127.0.0.1", proxy.port)
            result = await strict.connection(url).send(message(Route("never")))
    finally:
        await strict.close()
    assert_failed(result, "refused address", "loopback")
    assert proxy.connections == 0
