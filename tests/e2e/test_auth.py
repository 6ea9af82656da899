"""Bearer tokens and scopes against the real server: 401, 403, issue, revoke."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, assert_problem

EVENT = {"type": "auth.checked", "data": {}}


@pytest.fixture
def admin(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with shared_server.client() as client:
        yield client


@pytest.fixture
def anonymous(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with shared_server.client(token=None) as client:
        yield client


def issue(admin: httpx.Client, scope: str) -> dict[str, str]:
    response = admin.post("/v1/tokens", json={"scope": scope, "description": f"e2e {scope}"})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    assert body["id"].startswith("tok_")
    assert body["scope"] == scope
    assert body["token"]
    return body


def ingest(client: httpx.Client, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(
        "/v1/events",
        json=EVENT,
        headers={"Idempotency-Key": uuid.uuid4().hex, **(headers or {})},
    )


CALLS = [
    ("POST", "/v1/events"),
    ("POST", "/v1/events/batch"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/evt_01JD0000000000000000000000"),
    ("GET", "/v1/stats"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/tok_01JD0000000000000000000000"),
]

BAD_AUTHORIZATION = [
    "",
    "Bearer",
    "Bearer er_not_a_real_token",
    "Basic " + "YWRtaW46YWRtaW4=",
    "bearer-er_test_admin_token_0123456789",
    "Bearer er_test_admin_token_012345678",  # the admin token minus its last character
]


@pytest.mark.parametrize(("method", "path"), CALLS)
def test_every_call_without_a_token_is_401(anonymous: httpx.Client, method: str, path: str) -> None:
    response = anonymous.request(method, path, headers={"Idempotency-Key": "k"}, json=EVENT)
    assert_problem(response, 401)
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
@pytest.mark.parametrize(("method", "path"), [CALLS[0], CALLS[4]])
def test_invalid_token_is_401(
    anonymous: httpx.Client, method: str, path: str, authorization: str
) -> None:
    headers = {"Authorization": authorization, "Idempotency-Key": "k"}
    response = anonymous.request(method, path, headers=headers, json=EVENT)
    assert_problem(response, 401)
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_health_and_metrics_need_no_token(anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert anonymous.get("/metrics").status_code == 200


def test_ingest_token_may_only_ingest(admin: httpx.Client, shared_server: ServerProcess) -> None:
    token = issue(admin, "ingest")
    with shared_server.client(token=token["token"]) as client:
        accepted = ingest(client)
        assert accepted.status_code == 202, accepted.text
        batch = client.post(
            "/v1/events/batch",
            json={"events": [{"idempotency_key": uuid.uuid4().hex, **EVENT}]},
        )
        assert batch.status_code == 200, batch.text

        for method, path in CALLS[2:]:
            body = {"scope": "admin"} if path == "/v1/tokens" else None
            assert_problem(client.request(method, path, json=body), 403)
        # What the ingest token sent was stored; only reading it back needs admin.
        assert admin.get(f"/v1/events/{accepted.json()['id']}").status_code == 200


def test_issued_admin_token_is_admin(admin: httpx.Client, shared_server: ServerProcess) -> None:
    token = issue(admin, "admin")
    with shared_server.client(token=token["token"]) as client:
        assert client.get("/v1/stats").status_code == 200
        assert ingest(client).status_code == 202
        assert client.post("/v1/tokens", json={"scope": "ingest"}).status_code == 201


def test_token_is_shown_once_and_unique(admin: httpx.Client) -> None:
    first, second = issue(admin, "ingest"), issue(admin, "ingest")
    assert first["token"] != second["token"]
    assert first["id"] != second["id"]


@pytest.mark.parametrize("scope", ["ingest", "admin"])
def test_revoked_token_is_401(
    admin: httpx.Client, shared_server: ServerProcess, scope: str
) -> None:
    token = issue(admin, scope)
    with shared_server.client(token=token["token"]) as client:
        assert ingest(client).status_code == 202
        revoked = admin.delete(f"/v1/tokens/{token['id']}")
        assert revoked.status_code == 204, revoked.text
        assert_problem(ingest(client), 401)
        assert_problem(client.get("/v1/stats"), 401)
    assert_problem(admin.delete(f"/v1/tokens/{token['id']}"), 404)


@pytest.mark.parametrize("body", [{}, {"scope": "root"}, {"scope": "ingest", "extra": 1}, []])
def test_bad_token_request_is_422(admin: httpx.Client, body: object) -> None:
    assert_problem(admin.post("/v1/tokens", json=body), 422)
