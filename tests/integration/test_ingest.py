"""``POST /v1/events`` and ``GET /v1/events/{id}`` through the app, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.domain.ids import looks_like_id
from tests.integration.support import assert_problem, event_count, locs

UNUSUAL_DATA: dict[str, Any] = {
    "text": "héllo wörld — 中文 — \U0001f600 — \u200b",
    "escapes": 'quote " backslash \\ newline \n tab \t',
    "backslash_u_text": "\\u0000",
    "nested": {"a": [1, 2.5, None, True, False, {"b": [], "c": {}}], "": "empty key"},
    "max_double": 1.7976931348623157e308,
    "min_subnormal": 5e-324,
    "negative_zero": -0.0,
    "int53_plus_one": 9007199254740993,
    "min_int64": -(2**63),
    "max_uint64": 2**64 - 1,
    "empty": "",
}


async def post(client: httpx.AsyncClient, body: Any, key: str) -> httpx.Response:
    return await client.post("/v1/events", json=body, headers={"Idempotency-Key": key})


async def test_accepted_answer(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    response = await post(client, {"type": "order.created", "key": "customer-42"}, "k1")
    after = datetime.now(UTC)

    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in response.headers
    body = response.json()
    assert body.keys() == {"id", "type", "key", "received_at", "schema_version", "deliveries"}
    assert looks_like_id(body["id"], "evt")
    assert body["type"] == "order.created"
    assert body["key"] == "customer-42"
    assert body["schema_version"] is None
    assert body["deliveries"] == 0
    assert body["received_at"].endswith("Z")
    received_at = datetime.fromisoformat(body["received_at"])
    assert before - timedelta(seconds=1) <= received_at <= after + timedelta(seconds=1)


async def test_stored_event_reads_back_intact_and_unknown_is_404(client: httpx.AsyncClient) -> None:
    sent = {
        "type": "order.created",
        "key": "c-\u00e9",
        "data": UNUSUAL_DATA,
        "occurred_at": "2026-11-26T12:00:00.250+02:00",
    }
    accepted = await post(client, sent, "k1")
    assert accepted.status_code == 202, accepted.text

    response = await client.get(f"/v1/events/{accepted.json()['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": accepted.json()["id"],
        "type": "order.created",
        "key": "c-\u00e9",
        "data": UNUSUAL_DATA,
        "schema_version": None,
        "occurred_at": "2026-11-26T10:00:00.250000Z",
        "received_at": accepted.json()["received_at"],
        "deliveries": [],
    }
    assert_problem(await client.get("/v1/events/evt_01JD0000000000000000000000"), 404)


async def test_any_json_value_is_data(client: httpx.AsyncClient) -> None:
    for i, data in enumerate([None, 0, "text", [1, "two", None], {"deep": {"er": [[[]]]}}]):
        accepted = await post(client, {"type": "t", "data": data}, f"k{i}")
        assert accepted.status_code == 202, accepted.text
        stored = (await client.get(f"/v1/events/{accepted.json()['id']}")).json()
        assert (stored["data"], stored["key"], stored["occurred_at"]) == (data, None, None)


# Each table runs as one test per backend: the database is what costs, not the case.
NOT_JSON = {
    "nan": b'{"type": "t", "data": NaN}',
    "minus-infinity": b'{"type": "t", "data": -Infinity}',
    "beyond-double": b'{"type": "t", "data": 1e400}',
    "invalid-utf8": b'{"type": "t", "data": "\xff"}',
    "truncated": b'{"type": "t"',
    "empty": b"",
    "deep": b'{"type": "t", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "nan-beside-nul": b'{"type": "t", "data": [NaN, "\\u0000"]}',
}

UNSTORABLE = {
    b'{"type": "t", "data": {"x": "a\\u0000"}}': "/data/x",
    b'{"type": "t", "data": ["ok", "\\ud800"]}': "/data/1",
    b'{"type": "t", "key": "\\udfff"}': "/key",
    b'{"type": "t", "data": {"a/b~": "\\u0000"}}': "/data/a~1b~0",
    b'{"type": "t", "data": {"k\\u0000": 1}}': "/data/k\x00",
}

INVALID: list[tuple[Any, str]] = [
    ({"type": "bad type"}, "/type"),
    ({"type": "t" * 201}, "/type"),
    ({"key": "k"}, "/type"),
    ({"type": "t", "key": "k" * 201}, "/key"),
    ({"type": "t", "occurred_at": "2026-11-26T10:00:00"}, "/occurred_at"),
    ({"type": "t", "surprise": 1}, "/surprise"),
    ([{"type": "t"}], "/"),
]


async def post_raw(client: httpx.AsyncClient, body: bytes, key: str = "k1") -> httpx.Response:
    return await client.post(
        "/v1/events",
        content=body,
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )


async def test_not_json_is_400_and_stores_nothing(client: httpx.AsyncClient) -> None:
    for name, body in NOT_JSON.items():
        response = await post_raw(client, body)
        assert response.status_code == 400, f"{name}: {response.status_code} {response.text}"
        assert_problem(response, 400)
    assert await event_count(client) == 0


async def test_unstorable_strings_are_422_and_store_nothing(client: httpx.AsyncClient) -> None:
    for body, loc in UNSTORABLE.items():
        response = await post_raw(client, body)
        assert response.status_code == 422, f"{body!r}: {response.status_code} {response.text}"
        assert locs(assert_problem(response, 422)) == [loc], body
    assert await event_count(client) == 0


async def test_invalid_event_is_422_and_stores_nothing(client: httpx.AsyncClient) -> None:
    for body, loc in INVALID:
        response = await post(client, body, "k1")
        assert response.status_code == 422, f"{body!r}: {response.status_code} {response.text}"
        assert locs(assert_problem(response, 422)) == [loc], body
    assert await event_count(client) == 0


async def test_text_with_backslash_u_is_plain_text(client: httpx.AsyncClient) -> None:
    accepted = await post_raw(client, b'{"type": "t", "data": "\\\\u0000 and \\ud83d\\ude00"}')
    assert accepted.status_code == 202, accepted.text
    stored = (await client.get(f"/v1/events/{accepted.json()['id']}")).json()
    assert stored["data"] == "\\u0000 and \U0001f600"


async def test_only_json_is_accepted(client: httpx.AsyncClient) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
        response = await client.post(
            "/v1/events",
            content=b'{"type": "t"}',
            headers={"Content-Type": content_type, "Idempotency-Key": "k1"},
        )
        assert response.status_code == 415, content_type
        assert_problem(response, 415)
    assert await event_count(client) == 0
    response = await client.post(
        "/v1/events",
        content=b'{"type": "t"}',
        headers={"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": "k1"},
    )
    assert response.status_code == 202, response.text


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"type": "t", "data": "' + b"x" * 1_048_576 + b'"}'
    assert_problem(await post_raw(client, body), 413)
    assert await event_count(client) == 0


# Legal JSON that is awkward to store: refusing it (400) is allowed, crashing (500) is not.
AWKWARD = {
    "nested-300": b"[" * 300 + b"]" * 300,
    "nested-1000": b"[" * 1000 + b"]" * 1000,
    "big-int-beside-backslash-u": b'[1180591620717411303424, "\\\\u0000"]',
}


async def test_legal_json_is_never_a_500(client: httpx.AsyncClient) -> None:
    outcomes = {}
    for n, (name, data) in enumerate(AWKWARD.items()):
        response = await post_raw(client, b'{"type": "t", "data": ' + data + b"}", f"k{n}")
        outcomes[name] = response.status_code
        if response.status_code == 202:
            stored = await client.get(f"/v1/events/{response.json()['id']}")
            assert stored.status_code == 200, name
        elif response.status_code == 400:
            assert_problem(response, 400)
    assert all(status in (202, 400) for status in outcomes.values()), outcomes
