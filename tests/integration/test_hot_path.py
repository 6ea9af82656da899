"""``POST /v1/events`` answers the same through the hot path as through FastAPI's route.

Two apps on the same database, one with ``IngestHotPath`` and one without,
get the same requests (good and bad); every answer must match in status,
headers that matter, and body (IDs and timestamps aside).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.api import events
from app.api.hot_path import IngestHotPath, find_route
from app.errors import BadRequest
from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN

Call = Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]

_VOLATILE = re.compile(r'"(evt_[0-9A-Z]{26}|\d{4}-\d\d-\d\dT[0-9:.]+Z)"')
_HEADERS = ("content-type", "idempotent-replayed", "www-authenticate", "retry-after")


def _event(key: str, **extra: Any) -> Call:
    async def call(client: httpx.AsyncClient, prefix: str) -> httpx.Response:
        body = {"type": "order.created", "key": "c-1", "data": {"n": 1}} | extra
        return await client.post("/v1/events", json=body, headers={"Idempotency-Key": prefix + key})

    return call


def _raw(content: bytes, content_type: str = "application/json", **headers: str) -> Call:
    async def call(client: httpx.AsyncClient, prefix: str) -> httpx.Response:
        sent = {"Content-Type": content_type, "Idempotency-Key": prefix + "raw"} | headers
        return await client.post("/v1/events", content=content, headers=sent)

    return call


def _unauthenticated(authorization: str | None) -> Call:
    async def call(client: httpx.AsyncClient, prefix: str) -> httpx.Response:
        request = client.build_request("POST", "/v1/events", json={"type": "a.b"})
        del request.headers["Authorization"]  # the client's own token
        if authorization:
            request.headers["Authorization"] = authorization
        return await client.send(request)

    return call


async def _cloudevent(client: httpx.AsyncClient, prefix: str) -> httpx.Response:
    body = {"specversion": "1.0", "id": prefix + "ce", "source": "/shop", "type": "order.paid"}
    headers = {"Content-Type": "application/cloudevents+json"}
    return await client.post("/v1/events", json=body, headers=headers)


async def _other_routes(client: httpx.AsyncClient, prefix: str) -> httpx.Response:
    return await client.get("/v1/events", params={"limit": 1, "type": "nothing.here"})


CASES: dict[str, Call] = {
    "accepted": _event("one"),
    "replayed": _event("one"),
    "key reused with another body": _event("one", data={"n": 2}),
    "without data": _event("two", data=None),
    "malformed json": _raw(b'{"type": '),
    "not an object": _raw(b"[1, 2]"),
    "nan": _raw(b'{"type": "a.b", "data": NaN}'),
    "empty body": _raw(b""),
    "wrong content type": _raw(b'{"type": "a.b"}', "text/plain"),
    "too large": _raw(b'{"type": "a.b", "data": "' + b"x" * 1_100_000 + b'"}'),
    "bad type": _raw(b'{"type": "no spaces allowed"}'),
    "bad idempotency key": _raw(b'{"type": "a.b"}', **{"Idempotency-Key": "x" * 300}),
    "no token": _unauthenticated(None),
    "unknown token": _unauthenticated("Bearer er_nope"),
    "cloudevent": _cloudevent,
    "listing (not the hot path)": _other_routes,
}


def _without_hot_path(settings: Settings) -> FastAPI:
    app = create_app(settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not IngestHotPath]
    return app


@pytest.fixture
async def clients(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    hot, plain = create_app(settings), _without_hot_path(settings)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        hot.router.lifespan_context(hot),
        plain.router.lifespan_context(plain),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=hot), base_url="http://t", headers=auth
        ) as a,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=plain), base_url="http://t", headers=auth
        ) as b,
    ):
        yield a, b


def _shape(response: httpx.Response) -> tuple[int, dict[str, str], str]:
    headers = {h: response.headers[h] for h in _HEADERS if h in response.headers}
    return response.status_code, headers, _VOLATILE.sub('"…"', response.text)


async def test_every_answer_matches_the_route(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    hot, plain = clients
    statuses = set()
    for name, call in CASES.items():
        through_hot = await call(hot, "hot-")
        through_route = await call(plain, "route-")
        assert _shape(through_hot) == _shape(through_route), name
        assert "x-request-id" in through_hot.headers, name
        statuses.add(through_hot.status_code)
    # The cases cover acceptance, replay and each kind of refusal.
    assert statuses >= {200, 202, 400, 401, 413, 415, 422}


async def test_the_hot_path_serves_the_route_and_labels_its_metrics(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    hot, _ = clients
    route = find_route(events.router.routes, "POST", "/v1/events")

    async def not_here(*_: object) -> None:
        raise AssertionError("FastAPI's route ran")

    monkeypatch.setattr(route, "handle", not_here)
    assert (await _event("served")(hot, "hot-")).status_code == 202
    metrics = (await hot.get("/metrics")).text
    assert 'http_requests_total{handler="/v1/events",method="POST",status="2xx"}' in metrics


@pytest.mark.parametrize(
    ("raised", "status"),
    [(HTTPException(404, "gone"), 404), (BadRequest("nope"), 400), (RuntimeError("bug"), 500)],
)
async def test_errors_are_rendered_by_the_apps_handlers(
    settings: Settings, raised: Exception, status: int
) -> None:
    app = create_app(settings)

    async def endpoint(_: Request) -> Response:
        raise raised

    for middleware in app.user_middleware:
        if middleware.cls is IngestHotPath:
            middleware.kwargs["endpoint"] = endpoint
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/v1/events", json={"type": "a.b"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
