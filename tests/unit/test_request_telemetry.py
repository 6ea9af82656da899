"""Request IDs: echoed when sent, made up (unique, also across processes) when not."""

from __future__ import annotations

from typing import Any

import pytest

from app.api.middleware import MAX_ID_LENGTH, RequestTelemetry
from app.logging import request_id
from app.precedence import RequestsFirst


async def _answer(middleware: RequestTelemetry, *headers: tuple[bytes, bytes]) -> tuple[str, str]:
    """(the ID the app saw on its log context, the ID sent back)."""
    seen: list[str | None] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(request_id.get())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        sent.append(message)

    middleware.app = app
    await middleware({"type": "http", "method": "GET", "headers": list(headers)}, None, send)
    echoed = dict(sent[0]["headers"])[b"x-request-id"].decode("latin-1")
    assert seen[0] is not None
    assert request_id.get() is None, "the ID does not outlive its request"
    return seen[0], echoed


async def test_a_sent_id_is_used_and_echoed() -> None:
    middleware = RequestTelemetry(None)  # type: ignore[arg-type]
    assert await _answer(middleware, (b"x-request-id", b"abc-123")) == ("abc-123", "abc-123")


async def test_a_long_id_is_cut() -> None:
    middleware = RequestTelemetry(None)  # type: ignore[arg-type]
    seen, echoed = await _answer(middleware, (b"x-request-id", b"a" * 500))
    assert seen == echoed == "a" * MAX_ID_LENGTH


@pytest.mark.parametrize("sent", [b"", "é".encode("latin-1")])
async def test_a_missing_or_unusable_id_is_made_up(sent: bytes) -> None:
    first, second = RequestTelemetry(None), RequestTelemetry(None)  # type: ignore[arg-type]
    made = [(await _answer(m, (b"x-request-id", sent)))[0] for m in (first, first, second)]
    assert len(set(made)) == 3, "unique within a process and across two"
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in made)


async def test_a_request_is_in_flight_until_it_is_answered_or_fails() -> None:
    first = RequestsFirst()
    middleware = RequestTelemetry(None, requests_first=first)  # type: ignore[arg-type]
    during: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        during.append(first.in_flight)
        if scope["method"] == "PUT":
            raise RuntimeError("the app failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        during.append(first.in_flight)

    middleware.app = app
    await middleware({"type": "http", "method": "GET", "headers": []}, None, send)
    assert during == [1, 1, 1]
    assert first.in_flight == 0
    with pytest.raises(RuntimeError):
        await middleware({"type": "http", "method": "PUT", "headers": []}, None, send)
    assert first.in_flight == 0, "a failed request is no longer in flight"
