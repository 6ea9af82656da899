"""``GET /v1/events``: order, filters, cursor pagination, limit bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from tests.integration.support import assert_problem, locs

# (type, key) of the events each test starts with, in ingest order.
SEED = [
    ("order.created", "c-1"),
    ("order.paid", "c-1"),
    ("order.created", "c-2"),
    ("invoice.sent", None),
    ("order.created", "c-1"),
    ("order.paid", "c-2"),
    ("order.created", None),
]


async def seed(client: httpx.AsyncClient) -> list[str]:
    """Ingest ``SEED`` one at a time (so the store's order is this order); return the IDs."""
    ids = []
    for n, (event_type, key) in enumerate(SEED):
        response = await client.post(
            "/v1/events",
            json={"type": event_type, "key": key, "data": {"n": n}},
            headers={"Idempotency-Key": f"seed-{n}"},
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body.keys() == {"items", "next_cursor"}
    return body


async def walk(client: httpx.AsyncClient, **params: Any) -> list[str]:
    """Every ID the listing yields, following ``next_cursor`` to the end."""
    seen: list[str] = []
    cursor = None
    for _ in range(len(SEED) + 2):
        body = await page(client, **params, **({"cursor": cursor} if cursor else {}))
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError(f"pagination did not end: {seen}")


async def test_newest_first_by_default_oldest_first_on_request(
    client: httpx.AsyncClient,
) -> None:
    ids = await seed(client)
    body = await page(client)
    assert [item["id"] for item in body["items"]] == ids[::-1]
    assert body["next_cursor"] is None
    newest = body["items"][0]
    assert newest.keys() == {
        "id",
        "type",
        "key",
        "data",
        "schema_version",
        "occurred_at",
        "received_at",
    }
    assert (newest["type"], newest["key"], newest["data"]) == ("order.created", None, {"n": 6})
    assert [item["id"] for item in (await page(client, order="asc"))["items"]] == ids
    assert [item["id"] for item in (await page(client, order="desc"))["items"]] == ids[::-1]


async def test_filters(client: httpx.AsyncClient) -> None:
    ids = await seed(client)
    by_type = await page(client, type="order.created")
    assert [i["id"] for i in by_type["items"]] == [ids[6], ids[4], ids[2], ids[0]]
    by_key = await page(client, key="c-1", order="asc")
    assert [i["id"] for i in by_key["items"]] == [ids[0], ids[1], ids[4]]
    both = await page(client, type="order.paid", key="c-2")
    assert [i["id"] for i in both["items"]] == [ids[5]]
    assert (await page(client, type="no.such.type"))["items"] == []
    # type filters are exact: no prefix or wildcard matching.
    assert (await page(client, type="order.*"))["items"] == []


async def test_cursor_walks_every_event_exactly_once(client: httpx.AsyncClient) -> None:
    ids = await seed(client)
    for limit in (1, 2, 3, len(SEED), len(SEED) + 1, 500):
        assert await walk(client, limit=limit) == ids[::-1], limit
        assert await walk(client, limit=limit, order="asc") == ids, limit
    # A page that ends exactly at the last event says so: no cursor to an empty page.
    assert (await page(client, limit=len(SEED)))["next_cursor"] is None
    assert len((await page(client, limit=1))["items"]) == 1
    assert await walk(client, limit=1, type="order.created", order="asc") == [
        ids[0],
        ids[2],
        ids[4],
        ids[6],
    ]


async def test_cursor_sees_events_ingested_while_walking(client: httpx.AsyncClient) -> None:
    ids = await seed(client)
    first = await page(client, order="asc", limit=4)
    late = await client.post("/v1/events", json={"type": "late"}, headers={"Idempotency-Key": "z"})
    rest = await page(client, order="asc", limit=10, cursor=first["next_cursor"])
    assert [i["id"] for i in rest["items"]] == [*ids[4:], late.json()["id"]]


async def test_bad_parameters_are_422_problems(client: httpx.AsyncClient) -> None:
    cases = [
        ({"limit": 0}, "query:limit"),
        ({"limit": 501}, "query:limit"),
        ({"limit": -1}, "query:limit"),
        ({"limit": "ten"}, "query:limit"),
        ({"order": "sideways"}, "query:order"),
        ({"cursor": "not-a-cursor!"}, "query:cursor"),
        ({"type": "t" * 201}, "query:type"),
    ]
    for params, loc in cases:
        response = await client.get("/v1/events", params=params)
        assert response.status_code == 422, f"{params}: {response.status_code}"
        assert locs(assert_problem(response, 422)) == [loc], params


async def test_default_limit_is_50(client: httpx.AsyncClient) -> None:
    batch = [{"idempotency_key": f"b{n}", "type": "t"} for n in range(51)]
    assert (await client.post("/v1/events/batch", json={"events": batch})).status_code == 200
    body = await page(client)
    assert len(body["items"]) == 50
    assert body["next_cursor"] is not None
    assert len((await page(client, cursor=body["next_cursor"]))["items"]) == 1


async def test_a_time_window_bounds_received_at(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    ids = await seed(client)
    after = datetime.now(UTC)
    window = {"since": before.isoformat(), "until": after.isoformat()}
    assert await walk(client, **window, limit=2) == ids[::-1]
    assert await walk(client, since=after.isoformat()) == []
    assert await walk(client, until=before.isoformat()) == []
    # A window that ends at an event's own received_at leaves it out ([since, until)).
    newest = await client.get(f"/v1/events/{ids[-1]}")
    received = newest.json()["received_at"]
    assert ids[-1] not in await walk(client, until=received)
    assert ids[-1] in await walk(client, since=received)
    naive = await client.get("/v1/events", params={"since": "2026-01-01T00:00:00"})
    assert locs(assert_problem(naive, 422)) == ["query:since"]


async def test_delivery_status_keeps_events_with_a_delivery_in_that_status(
    client: httpx.AsyncClient,
) -> None:
    ids = await seed(client)
    assert await walk(client, delivery_status="pending") == []  # no subscription yet
    created = await client.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["order.paid"]},
    )
    assert created.status_code == 201, created.text
    paid = [
        (
            await client.post(
                "/v1/events",
                json={"type": "order.paid", "data": {}},
                headers={"Idempotency-Key": f"paid-{n}"},
            )
        ).json()["id"]
        for n in range(3)
    ]
    assert await walk(client, delivery_status="pending", limit=2) == paid[::-1]
    assert await walk(client, delivery_status="pending", order="asc") == paid
    assert await walk(client, delivery_status="succeeded") == []
    assert not set(ids) & set(await walk(client, delivery_status="pending"))
    bad = await client.get("/v1/events", params={"delivery_status": "lost"})
    assert_problem(bad, 422)


async def test_tokens_are_listed_without_their_values(client: httpx.AsyncClient) -> None:
    issued = []
    for n in range(3):
        response = await client.post(
            "/v1/tokens", json={"scope": "ingest" if n else "admin", "description": f"t{n}"}
        )
        assert response.status_code == 201, response.text
        issued.append(response.json())
    revoked = issued.pop()
    assert (await client.delete(f"/v1/tokens/{revoked['id']}")).status_code == 204

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        body = (await client.get("/v1/tokens", params=params)).json()
        seen += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [t["id"] for t in seen] == sorted(t["id"] for t in issued)
    for listed, made in zip(seen, sorted(issued, key=lambda t: t["id"]), strict=True):
        assert listed.keys() == {"id", "scope", "description", "created_at", "tenant_id"}
        assert listed["tenant_id"] is None
        assert listed["scope"] == made["scope"]
    assert not any(made["token"] in str(seen) for made in issued)
