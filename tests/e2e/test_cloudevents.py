"""CloudEvents built with the ``cloudevents`` SDK, posted to the real server in
each mode (structured, binary, batch), reach a subscriber with the right type,
key and data; a replayed (source, id) creates no second event; data that does
not fit the type's schema is refused before anything is stored.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent

from tests.e2e.conftest import assert_problem
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import ReceiverPool, wait_until

SETTLE_SECONDS = 15.0
SOURCE = "https://shop.example.com/orders"
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}},
    "required": ["total"],
}


def cloudevent(event_type: str, data: Any, key: str, event_id: str | None = None) -> CloudEvent:
    attributes = {
        "type": event_type,
        "source": SOURCE,
        "id": event_id or uuid.uuid4().hex,
        "partitionkey": key,
    }
    return CloudEvent(attributes, data)


async def post(relay: Relay, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await relay.http.post("/v1/events", content=body, headers=headers)


async def events_of(relay: Relay, event_type: str) -> list[dict[str, Any]]:
    response = await relay.http.get("/v1/events", params={"type": event_type, "limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def registered_type(relay: Relay, prefix: str) -> str:
    name = f"{prefix}.order"
    response = await relay.http.post("/v1/event-types", json={"name": name})
    assert response.status_code == 201, response.text
    schema = await relay.http.post(f"/v1/event-types/{name}/schemas", json={"schema": ORDER_SCHEMA})
    assert schema.status_code == 201, schema.text
    return name


async def test_every_mode_is_delivered_and_a_replay_is_not(
    relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start()
    prefix = unique_type("ce")
    await relay.subscribe(receiver.url(), event_types=[f"{prefix}.*"])
    order_type = await registered_type(relay, prefix)
    note_type = f"{prefix}.note"

    structured = cloudevent(order_type, {"total": 10}, "customer-1")
    headers, body = to_structured(structured)
    first = await post(relay, headers, body)
    assert first.status_code == 202, first.text
    assert first.json()["schema_version"] == 1

    headers, body = to_binary(cloudevent(note_type, {"text": "hello"}, "customer-2"))
    binary = await post(relay, headers, body)
    assert binary.status_code == 202, binary.text

    batch = [cloudevent(order_type, {"total": n}, f"customer-{n}") for n in (3, 4)]
    batch_body = json.dumps([json.loads(to_structured(e)[1]) for e in batch]).encode()
    batched = await post(relay, {"content-type": "application/cloudevents-batch+json"}, batch_body)
    assert batched.status_code == 200, batched.text
    assert [i["replayed"] for i in batched.json()["items"]] == [False, False]

    # The same (source, id) again, in another mode: the same event, not a new one.
    headers, body = to_binary(structured)
    replay = await post(relay, headers, body)
    assert replay.status_code == 202, replay.text
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]

    ids = {
        first.json()["id"]: (order_type, "customer-1", {"total": 10}, 1),
        binary.json()["id"]: (note_type, "customer-2", {"text": "hello"}, None),
        batched.json()["items"][0]["id"]: (order_type, "customer-3", {"total": 3}, 1),
        batched.json()["items"][1]["id"]: (order_type, "customer-4", {"total": 4}, 1),
    }
    await wait_until(
        lambda: receiver.succeeded_ids() >= ids.keys(),
        SETTLE_SECONDS,
        message="every CloudEvent delivered",
    )
    for event_id, (event_type, key, data, version) in ids.items():
        (receipt,) = receiver.for_event(event_id)
        body_json = receipt.json
        assert (body_json["type"], body_json["key"], body_json["data"]) == (event_type, key, data)
        assert body_json["schema_version"] == version
    assert len(await events_of(relay, order_type)) == 3
    assert len(await events_of(relay, note_type)) == 1
    assert receiver.ids() == set(ids)


async def test_the_same_pair_with_another_body_is_refused(relay: Relay) -> None:
    event_type = unique_type("ce")
    event_id = uuid.uuid4().hex
    headers, body = to_structured(cloudevent(event_type, {"n": 1}, "k", event_id))
    assert (await post(relay, headers, body)).status_code == 202
    headers, body = to_structured(cloudevent(event_type, {"n": 2}, "k", event_id))
    problem = assert_problem(await post(relay, headers, body), 422)
    assert [e["loc"] for e in problem["errors"]] == ["/id"]
    assert len(await events_of(relay, event_type)) == 1


async def test_data_that_breaks_the_schema_is_refused_in_every_mode(relay: Relay) -> None:
    order_type = await registered_type(relay, unique_type("ce"))
    bad = cloudevent(order_type, {"total": "ten"}, "k")

    headers, body = to_structured(bad)
    structured = assert_problem(await post(relay, headers, body), 422)
    assert [e["loc"] for e in structured["errors"]] == ["/data/total"]

    headers, body = to_binary(bad)
    binary = assert_problem(await post(relay, headers, body), 422)
    assert [e["loc"] for e in binary["errors"]] == ["/total"]

    good = cloudevent(order_type, {"total": 1}, "k")
    batch_body = json.dumps([json.loads(to_structured(e)[1]) for e in (good, bad)]).encode()
    response = await post(relay, {"content-type": "application/cloudevents-batch+json"}, batch_body)
    batch = assert_problem(response, 422)
    assert [e["loc"] for e in batch["errors"]] == ["/1/data/total"]
    assert await events_of(relay, order_type) == []


async def test_a_cloudevent_without_an_id_is_400(relay: Relay) -> None:
    # The SDK would invent one; eventrelay must not, or deduplication is lost.
    headers, body = to_structured(cloudevent(unique_type("ce"), {"n": 1}, "k"))
    document = json.loads(body)
    del document["id"]
    problem = assert_problem(await post(relay, headers, json.dumps(document).encode()), 400)
    assert [e["loc"] for e in problem["errors"]] == ["/id"]
