"""``POST /v1/events/batch``: all or nothing, answered in request order."""

from __future__ import annotations

from typing import Any

import httpx

from app.domain.ids import looks_like_id
from tests.integration.support import assert_problem, event_count, locs


def item(n: int) -> dict[str, Any]:
    return {"idempotency_key": f"k{n}", "type": f"order.n{n}", "key": "c-1", "data": {"n": n}}


async def post_batch(client: httpx.AsyncClient, items: list[Any]) -> httpx.Response:
    return await client.post("/v1/events/batch", json={"events": items})


async def test_items_are_answered_in_request_order(client: httpx.AsyncClient) -> None:
    response = await post_batch(client, [item(n) for n in (3, 1, 2)])
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["replayed"] for i in items] == [False, False, False]
    assert all(looks_like_id(i["id"], "evt") for i in items)
    types = [(await client.get(f"/v1/events/{i['id']}")).json()["type"] for i in items]
    assert types == ["order.n3", "order.n1", "order.n2"]
    assert await event_count(client) == 3


async def test_one_invalid_item_stores_nothing(client: httpx.AsyncClient) -> None:
    bad = item(1) | {"type": "not a type"}
    response = await post_batch(client, [item(0), bad, item(2)])
    assert locs(assert_problem(response, 422)) == ["/events/1/type"]
    assert await event_count(client) == 0


async def test_every_bad_item_is_named(client: httpx.AsyncClient) -> None:
    items = [item(0) | {"key": "k" * 201}, item(1), item(2) | {"surprise": True}]
    response = await post_batch(client, items)
    assert sorted(locs(assert_problem(response, 422))) == ["/events/0/key", "/events/2/surprise"]
    assert await event_count(client) == 0


async def test_unstorable_string_in_an_item_stores_nothing(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/events/batch",
        content=b'{"events": [{"idempotency_key": "a", "type": "t"},'
        b' {"idempotency_key": "b", "type": "t", "data": {"x": "\\u0000"}}]}',
        headers={"Content-Type": "application/json"},
    )
    assert locs(assert_problem(response, 422)) == ["/events/1/data/x"]
    assert await event_count(client) == 0


async def test_missing_item_key_is_named_while_required(client: httpx.AsyncClient) -> None:
    unkeyed = {k: v for k, v in item(1).items() if k != "idempotency_key"}
    response = await post_batch(client, [item(0), unkeyed])
    assert locs(assert_problem(response, 422)) == ["/events/1/idempotency_key"]
    assert await event_count(client) == 0


async def test_previously_stored_items_are_replayed(client: httpx.AsyncClient) -> None:
    single = await client.post(
        "/v1/events",
        json={k: v for k, v in item(0).items() if k != "idempotency_key"},
        headers={"Idempotency-Key": "k0"},
    )
    assert single.status_code == 202, single.text

    response = await post_batch(client, [item(0), item(1)])
    assert response.status_code == 200, response.text
    first, second = response.json()["items"]
    assert first == {"id": single.json()["id"], "replayed": True}
    assert second["replayed"] is False
    assert await event_count(client) == 2

    again = await post_batch(client, [item(0), item(1)])
    assert again.json()["items"] == [
        {"id": first["id"], "replayed": True},
        {"id": second["id"], "replayed": True},
    ]
    assert await event_count(client) == 2


async def test_a_stored_key_with_another_body_sinks_the_batch(client: httpx.AsyncClient) -> None:
    assert (await post_batch(client, [item(0)])).status_code == 200
    response = await post_batch(client, [item(1), item(0) | {"data": "changed"}])
    assert locs(assert_problem(response, 422)) == ["/events/1/idempotency_key"]
    assert await event_count(client) == 1


async def test_a_batch_of_one_names_its_item_when_its_key_was_used(
    client: httpx.AsyncClient,
) -> None:
    assert (await post_batch(client, [item(0)])).status_code == 200
    response = await post_batch(client, [item(0) | {"data": "changed"}])
    assert locs(assert_problem(response, 422)) == ["/events/0/idempotency_key"]
    assert await event_count(client) == 1


async def test_duplicate_key_in_one_batch_same_body_is_a_replay(
    client: httpx.AsyncClient,
) -> None:
    response = await post_batch(client, [item(0), item(1), item(0)])
    assert response.status_code == 200, response.text
    first, second, third = response.json()["items"]
    assert third == {"id": first["id"], "replayed": True}
    assert first["replayed"] is False
    assert second["id"] != first["id"]
    assert await event_count(client) == 2


async def test_duplicate_key_in_one_batch_different_body_is_422(
    client: httpx.AsyncClient,
) -> None:
    response = await post_batch(client, [item(0), item(0) | {"data": "other"}])
    assert locs(assert_problem(response, 422)) == ["/events/1/idempotency_key"]
    assert await event_count(client) == 0


async def test_at_most_500_items(client: httpx.AsyncClient) -> None:
    too_many = await post_batch(client, [item(n) for n in range(501)])
    assert locs(assert_problem(too_many, 422)) == ["/events"]
    assert await event_count(client) == 0

    full = await post_batch(client, [item(n) for n in range(500)])
    assert full.status_code == 200, full.text
    assert len({i["id"] for i in full.json()["items"]}) == 500
    assert await event_count(client) == 500


async def test_empty_or_malformed_batches_are_rejected(client: httpx.AsyncClient) -> None:
    for body in ({"events": []}, {}, {"events": "x"}, [item(0)]):
        response = await client.post("/v1/events/batch", json=body)
        assert response.status_code == 422, f"{body!r}: {response.text}"
        assert_problem(response, 422)
    not_json = await client.post(
        "/v1/events/batch",
        content=b'{"events": [NaN]}',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(not_json, 400)
    assert await event_count(client) == 0
