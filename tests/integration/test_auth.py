"""Bearer tokens and scopes on every ``/v1`` route."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from app.domain.ids import looks_like_id
from tests.conftest import ADMIN_TOKEN
from tests.integration.support import assert_problem, client_for

EVENT = {"type": "order.created", "data": {"total": 1}}
BATCH = {"events": [{"idempotency_key": "b1", "type": "order.created"}]}

# Every /v1 route of the ingest foundation, with a body good enough to pass validation.
ROUTES: list[tuple[str, str, object]] = [
    ("POST", "/v1/events", EVENT),
    ("POST", "/v1/events/batch", BATCH),
    ("GET", "/v1/events", None),
    ("GET", "/v1/events/evt_01JD0000000000000000000000", None),
    ("GET", "/v1/stats", None),
    ("POST", "/v1/tokens", {"scope": "ingest"}),
    ("DELETE", "/v1/tokens/tok_01JD0000000000000000000000", None),
]
ADMIN_ONLY = ROUTES[2:]  # the first two are the ingest routes


async def call(client: httpx.AsyncClient, method: str, path: str, body: object) -> httpx.Response:
    headers = {"Idempotency-Key": f"{method}{path}"}
    if body is None:
        return await client.request(method, path, headers=headers)
    return await client.request(method, path, json=body, headers=headers)


async def issue(client: httpx.AsyncClient, scope: str) -> dict[str, str]:
    response = await client.post("/v1/tokens", json={"scope": scope, "description": "test"})
    assert response.status_code == 201, response.text
    token: dict[str, str] = response.json()
    assert token.keys() == {"id", "token", "scope"}
    assert token["scope"] == scope
    assert looks_like_id(token["id"], "tok")
    return token


BAD_AUTHORIZATION = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer er_not_a_token",
    "Basic ZXI6eA==",
    ADMIN_TOKEN,  # the right token without the scheme
    f"Token {ADMIN_TOKEN}",
]


async def test_every_route_needs_a_valid_token(app: FastAPI) -> None:
    for authorization in BAD_AUTHORIZATION:
        async with client_for(app, token=None) as anonymous:
            if authorization is not None:
                anonymous.headers["Authorization"] = authorization
            for method, path, body in ROUTES:
                response = await call(anonymous, method, path, body)
                where = f"{authorization!r} {method} {path}"
                assert response.status_code == 401, f"{where}: {response.status_code}"
                assert_problem(response, 401)
                assert response.headers["www-authenticate"].startswith("Bearer"), where


async def test_unauthenticated_request_is_401_before_the_body_is_read(app: FastAPI) -> None:
    async with client_for(app, token=None) as anonymous:
        response = await anonymous.post(
            "/v1/events", content=b"not json", headers={"Content-Type": "text/plain"}
        )
    assert_problem(response, 401)


async def test_ingest_token_can_only_ingest(app: FastAPI, client: httpx.AsyncClient) -> None:
    token = await issue(client, "ingest")
    async with client_for(app, token=token["token"]) as ingest:
        single = await call(ingest, "POST", "/v1/events", EVENT)
        assert single.status_code == 202, single.text
        batch = await call(ingest, "POST", "/v1/events/batch", BATCH)
        assert batch.status_code == 200, batch.text
        for method, path, body in ADMIN_ONLY:
            response = await call(ingest, method, path, body)
            assert response.status_code == 403, f"{method} {path}: {response.status_code}"
            assert_problem(response, 403)
    assert (await client.get("/v1/stats")).json()["events"] == 2


async def test_issued_admin_token_can_do_everything(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await issue(client, "admin")
    async with client_for(app, token=token["token"]) as admin:
        assert (await call(admin, "POST", "/v1/events", EVENT)).status_code == 202
        assert (await admin.get("/v1/events")).status_code == 200
        assert (await admin.get("/v1/stats")).status_code == 200
        assert (await admin.post("/v1/tokens", json={"scope": "ingest"})).status_code == 201


async def test_tokens_are_shown_once_and_unique(client: httpx.AsyncClient) -> None:
    first, second = await issue(client, "ingest"), await issue(client, "ingest")
    assert first["id"] != second["id"]
    assert first["token"] != second["token"]


async def test_revoked_token_is_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    token = await issue(client, "ingest")
    async with client_for(app, token=token["token"]) as ingest:
        assert (await call(ingest, "POST", "/v1/events", EVENT)).status_code == 202
        revoked = await client.delete(f"/v1/tokens/{token['id']}")
        assert revoked.status_code == 204
        assert revoked.content == b""
        assert_problem(await call(ingest, "POST", "/v1/events", EVENT), 401)
    # Revoking twice: there is no active token of that id any more.
    assert_problem(await client.delete(f"/v1/tokens/{token['id']}"), 404)


async def test_revoking_an_unknown_token_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.delete("/v1/tokens/tok_01JD0000000000000000000000"), 404)


async def test_invalid_token_requests_are_422(client: httpx.AsyncClient) -> None:
    for body in ({"scope": "root"}, {}, {"scope": "ingest", "extra": 1}):
        response = await client.post("/v1/tokens", json=body)
        assert response.status_code == 422, f"{body}: {response.status_code}"
        assert_problem(response, 422)
