"""Content filters through the app, on both databases (API-v2, Filters): stored on
subscriptions, checked at subscribe time (against the schema registry too),
applied at fan-out and at replay, and ``POST /v1/filters/test``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.integration.support import assert_problem, client_for, locs

PUBLIC_URL = "http://8.8.8.8/hooks"
BIG_EUR = {"data": {"total": {"$gte": 100}, "currency": {"$in": ["EUR", "USD"]}}}
CONTRACT_EXAMPLE = {
    "data": {"total": {"$gte": 100}, "currency": {"$in": ["EUR", "USD"]}},
    "$or": [{"key": {"$startsWith": "customer-"}}, {"type": "order.refunded"}],
}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "total": {"type": "number"},
        "currency": {"type": "string"},
        "customer": {
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


async def subscribe(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("url", PUBLIC_URL)
    return await client.post("/v1/subscriptions", json=body)


async def subscription(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await subscribe(client, **body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def post_event(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/events", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def delivered_to(client: httpx.AsyncClient, event_id: str) -> set[str]:
    response = await client.get(f"/v1/events/{event_id}")
    assert response.status_code == 200, response.text
    return {d["subscription_id"] for d in response.json()["deliveries"]}


async def test_a_filter_is_stored_shown_changed_and_removed(client: httpx.AsyncClient) -> None:
    sub = await subscription(client, filter=CONTRACT_EXAMPLE)
    assert sub["filter"] == CONTRACT_EXAMPLE
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["filter"] == CONTRACT_EXAMPLE
    listed = (await client.get("/v1/subscriptions")).json()["items"]
    assert [s["filter"] for s in listed] == [CONTRACT_EXAMPLE]
    plain = await subscription(client)
    assert plain["filter"] is None

    # A PATCH without the field keeps it; with it, replaces it; null removes it.
    url = f"/v1/subscriptions/{sub['id']}"
    kept = await client.patch(url, json={"description": "orders"})
    assert kept.status_code == 200, kept.text
    assert kept.json()["filter"] == CONTRACT_EXAMPLE
    changed = await client.patch(url, json={"filter": {"type": "order.paid"}})
    assert changed.json()["filter"] == {"type": "order.paid"}
    assert (await client.get(url)).json()["filter"] == {"type": "order.paid"}
    removed = await client.patch(url, json={"filter": None})
    assert removed.status_code == 200, removed.text
    assert removed.json()["filter"] is None
    assert (await client.get(url)).json()["filter"] is None


async def test_a_malformed_filter_is_a_422_with_its_pointer_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    response = await subscribe(
        client, filter={"data": {"total": {"$gtx": 1}, "tags": {"$in": "vip"}}, "body": 1}
    )
    problem = assert_problem(response, 422)
    assert locs(problem) == ["/filter/data/total/$gtx", "/filter/data/tags/$in", "/filter/body"]
    assert (await client.get("/v1/subscriptions")).json()["items"] == []

    assert locs(assert_problem(await subscribe(client, filter=[1]), 422)) == ["/filter"]
    unstorable = await subscribe(client, filter={"key": "a\u0000b"})
    assert locs(assert_problem(unstorable, 422)) == ["/filter/key"]

    sub = await subscription(client, filter={"type": "x"})
    patched = await client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"filter": {"$or": [{"type": "x"}, {}]}}
    )
    assert locs(assert_problem(patched, 422)) == ["/filter/$or/1"]
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["filter"] == {"type": "x"}


async def test_a_path_no_latest_schema_allows_is_a_422(client: httpx.AsyncClient) -> None:
    for name in ("order.created", "order.paid"):
        assert (await client.post("/v1/event-types", json={"name": name})).status_code == 201
        registered = await client.post(
            f"/v1/event-types/{name}/schemas", json={"schema": ORDER_SCHEMA}
        )
        assert registered.status_code == 201, registered.text
    await client.post("/v1/event-types", json={"name": "order.open"})  # no schema

    typo = {"data": {"totl": {"$gte": 100}, "customer": {"name": "x"}}}
    response = await subscribe(client, event_types=["order.created", "order.paid"], filter=typo)
    problem = assert_problem(response, 422)
    assert locs(problem) == ["/filter/data/totl", "/filter/data/customer/name"]
    assert "order.created, order.paid" in problem["errors"][0]["msg"]
    assert (await client.get("/v1/subscriptions")).json()["items"] == []

    # Allowed paths pass; so does anything when a type is a wildcard or has no schema.
    good = {"data": {"total": {"$gte": 100}, "customer": {"id": "cus_1"}}}
    await subscription(client, event_types=["order.created"], filter=good)
    await subscription(client, event_types=["order.*"], filter=typo)
    await subscription(client, event_types=["order.created", "order.open"], filter=typo)
    loose = await subscription(client, event_types=["*"], filter=typo)

    # Narrowing the event types of a subscription with that filter is checked too.
    patched = await client.patch(
        f"/v1/subscriptions/{loose['id']}", json={"event_types": ["order.paid"]}
    )
    assert locs(assert_problem(patched, 422)) == ["/filter/data/totl", "/filter/data/customer/name"]
    assert (await client.get(f"/v1/subscriptions/{loose['id']}")).json()["event_types"] == ["*"]


async def test_fan_out_creates_deliveries_only_for_matching_filters(
    client: httpx.AsyncClient,
) -> None:
    everything = await subscription(client)
    big_eur = await subscription(client, filter=BIG_EUR)
    example = await subscription(client, event_types=["order.*"], filter=CONTRACT_EXAMPLE)
    keyless = await subscription(client, filter={"key": None})

    cases: list[tuple[dict[str, Any], set[str]]] = [
        # (event, the filtered subscriptions that get a delivery)
        (
            {
                "type": "order.created",
                "key": "customer-1",
                "data": {"total": 150, "currency": "EUR"},
            },
            {big_eur["id"], example["id"]},
        ),
        (
            {"type": "order.created", "key": "shop-1", "data": {"total": 150, "currency": "USD"}},
            {big_eur["id"]},
        ),
        (
            {"type": "order.refunded", "data": {"total": 100, "currency": "USD"}},
            {big_eur["id"], example["id"], keyless["id"]},
        ),
        ({"type": "order.created", "data": {"total": "150", "currency": "EUR"}}, {keyless["id"]}),
        ({"type": "user.created", "key": "customer-2", "data": None}, set()),
    ]
    for event, filtered in cases:
        accepted = await post_event(client, **event)
        expected = filtered | {everything["id"]}
        assert accepted["deliveries"] == len(expected), event
        assert await delivered_to(client, accepted["id"]) == expected, event

    batch = await client.post(
        "/v1/events/batch",
        json={
            "events": [
                {
                    "type": "order.created",
                    "key": "c-3",
                    "data": {"total": 5},
                    "idempotency_key": "b1",
                },
                {
                    "type": "order.created",
                    "key": "customer-4",
                    "data": {"total": 500, "currency": "EUR"},
                    "idempotency_key": "b2",
                },
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    small, large = (item["id"] for item in batch.json()["items"])
    assert await delivered_to(client, small) == {everything["id"]}
    assert await delivered_to(client, large) == {everything["id"], big_eur["id"], example["id"]}

    # A changed filter applies to the next event.
    await client.patch(f"/v1/subscriptions/{big_eur['id']}", json={"filter": None})
    accepted = await post_event(client, type="user.created", key="k", data={})
    assert await delivered_to(client, accepted["id"]) == {everything["id"], big_eur["id"]}


async def test_replay_applies_the_filter(client: httpx.AsyncClient) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    totals = [50, 100, 150, None, "200"]
    for total in totals:
        await post_event(client, type="order.created", data={"total": total, "currency": "EUR"})
    await post_event(client, type="order.paid", data=[{"total": 300, "currency": "EUR"}])
    sub = await subscription(client, filter=BIG_EUR)
    response = await client.post(
        f"/v1/subscriptions/{sub['id']}/replay",
        json={"since": since.isoformat().replace("+00:00", "Z")},
    )
    assert response.status_code == 202, response.text
    # 100 and 150, and the array whose element matches.
    assert response.json() == {"replayed": 3}


async def test_the_filter_test_endpoint(client: httpx.AsyncClient) -> None:
    async def test(filter_spec: Any, event: dict[str, Any]) -> httpx.Response:
        return await client.post("/v1/filters/test", json={"filter": filter_spec, "event": event})

    event = {
        "type": "order.created",
        "key": "customer-1",
        "data": {"total": 150, "currency": "EUR"},
    }
    assert (await test(CONTRACT_EXAMPLE, event)).json() == {"matches": True}
    assert (await test(CONTRACT_EXAMPLE, event | {"key": "shop"})).json() == {"matches": False}
    no_key = {"type": "order.refunded", "data": {"total": 150, "currency": "USD"}}
    response = await test(CONTRACT_EXAMPLE, no_key)
    assert (response.status_code, response.json()) == (200, {"matches": True})
    assert (await test({"key": None}, no_key)).json() == {"matches": True}
    assert (await test({"data": {"total": {"$gt": 5}}}, event | {"data": "x"})).json() == {
        "matches": False
    }

    problem = assert_problem(await test({"data": {"total": {"$gt": [1]}}}, event), 422)
    assert locs(problem) == ["/filter/data/total/$gt"]
    assert locs(assert_problem(await test("x", event), 422)) == ["/filter"]
    assert "/event/type" in locs(assert_problem(await test({}, {"data": 1}), 422))


async def test_the_filter_test_endpoint_needs_an_admin_token(
    client: httpx.AsyncClient, app: Any
) -> None:
    body = {"filter": {}, "event": {"type": "x"}}
    async with client_for(app, token=None) as anonymous:
        assert_problem(await anonymous.post("/v1/filters/test", json=body), 401)
    token = await client.post("/v1/tokens", json={"scope": "ingest", "description": "t"})
    async with client_for(app, token=token.json()["token"]) as ingest:
        assert_problem(await ingest.post("/v1/filters/test", json=body), 403)
