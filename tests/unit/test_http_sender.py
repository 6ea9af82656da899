"""The HTTP sender's refusals that need no network: IP literals on private addresses."""

from __future__ import annotations

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
