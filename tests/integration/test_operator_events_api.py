"""The reserved ``eventrelay.`` prefix through the API, on both databases: a
client may not send such an event (single, batch, CloudEvents) nor register
such a type, and nothing is stored; operator events read back like any event."""

from __future__ import annotations

import httpx

from tests.integration.support import assert_problem, event_count, locs

RESERVED = "eventrelay.delivery.dead_lettered"


async def test_a_client_event_with_a_reserved_type_is_422_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    single = await client.post(
        "/v1/events", json={"type": RESERVED, "data": {}}, headers={"Idempotency-Key": "k1"}
    )
    problem = assert_problem(single, 422)
    assert locs(problem) == ["/type"]
    assert "reserved" in problem["errors"][0]["msg"]

    batch = await client.post(
        "/v1/events/batch",
        json={
            "events": [
                {"idempotency_key": "b1", "type": "order.created"},
                {"idempotency_key": "b2", "type": "eventrelay.anything"},
            ]
        },
    )
    assert locs(assert_problem(batch, 422)) == ["/events/1/type"]

    cloudevent = await client.post(
        "/v1/events",
        json={"specversion": "1.0", "id": "1", "source": "/s", "type": RESERVED},
        headers={"content-type": "application/cloudevents+json"},
    )
    assert locs(assert_problem(cloudevent, 422)) == ["/type"]
    assert await event_count(client) == 0

    near = await client.post(
        "/v1/events", json={"type": "eventrelayed.x"}, headers={"Idempotency-Key": "k2"}
    )
    assert near.status_code == 202, near.text


async def test_a_reserved_event_type_cannot_be_registered(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/event-types", json={"name": "eventrelay.mine"})
    assert locs(assert_problem(response, 422)) == ["/name"]
    assert (await client.get("/v1/event-types/eventrelay.mine")).status_code == 404


async def test_a_manual_disable_is_an_event_listed_and_delivered_like_any(
    client: httpx.AsyncClient,
) -> None:
    made = await client.post("/v1/subscriptions", json={"url": "http://8.8.8.8/a"})
    watcher = await client.post(
        "/v1/subscriptions", json={"url": "http://8.8.8.8/ops", "event_types": ["eventrelay.*"]}
    )
    sub_id, watcher_id = made.json()["id"], watcher.json()["id"]
    patched = await client.patch(f"/v1/subscriptions/{sub_id}", json={"status": "disabled"})
    assert patched.json()["disabled_reason"] == "manual"

    listed = await client.get("/v1/events", params={"type": "eventrelay.subscription.disabled"})
    (item,) = listed.json()["items"]
    assert item["key"] == sub_id
    event = (await client.get(f"/v1/events/{item['id']}")).json()
    assert event["data"] == {"subscription_id": sub_id, "reason": "manual"}
    assert [d["subscription_id"] for d in event["deliveries"]] == [watcher_id]
