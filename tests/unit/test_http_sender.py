"""The HTTP sender: refusals that need no network (IP literals on private
addresses), and what one request carries on the wire to a loopback receiver."""

from __future__ import annotations

import asyncio

import pytest

from app.worker.protocol import Message
from app.worker.sender import HttpSender

MESSAGE = Message(b"{}", {"content-type": "application/json"}, 1.0)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://[::1]:9/hook", "http://10.1.2.3/hook"]
)
async def test_a_private_ip_literal_is_refused_without_connecting(url: str) -> None:
    sender = HttpSender(allow_private=False)
    try:
        result = await sender.connection(url).send(MESSAGE)
    finally:
        await sender.close()
    assert result.outcome.status_code is None
    assert result.outcome.error is not None
    assert result.outcome.error.startswith("refused address"), result.outcome.error


async def test_one_connection_per_destination() -> None:
    sender = HttpSender(allow_private=True)
    try:
        first = sender.connection("http://example.test/a")
        assert sender.connection("http://example.test/a") is first
        assert sender.connection("http://example.test/b") is not first
    finally:
        await sender.close()


async def test_a_webhook_carries_only_its_own_headers_and_host() -> None:
    """On the wire: the attempt's headers, Host and Content-Length; no Accept,
    Accept-Encoding or client User-Agent of aiohttp's own."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    headers = {
        "X-Team": "billing",
        "content-type": "application/json",
        "webhook-id": "evt_1",
        "user-agent": "eventrelay/test",
    }
    sender = HttpSender(allow_private=True)
    try:
        result = await sender.connection(f"http://127.0.0.1:{port}/in").send(
            Message(b'{"a":1}', headers, 5.0)
        )
    finally:
        await sender.close()
        server.close()
        await server.wait_closed()
    assert result.outcome.status_code == 200
    assert result.response_body == "ok"
    (head,) = heads
    request_line, *lines = head.decode().strip().split("\r\n")
    assert request_line == "POST /in HTTP/1.1"
    sent = {name.strip().lower(): value.strip() for name, value in (h.split(":", 1) for h in lines)}
    assert sent == {
        "host": f"127.0.0.1:{port}",
        "x-team": "billing",
        "content-type": "application/json",
        "webhook-id": "evt_1",
        "user-agent": "eventrelay/test",
        "content-length": "7",
    }
