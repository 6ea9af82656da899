"""``/v1/event-types`` and schema validation at ingest, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from fastapi import FastAPI

from app.settings import Settings
from tests.integration.support import assert_problem, client_for, event_count, locs, running

ORDER = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "currency": {"type": "string"}},
    "required": ["total"],
}
ORDER_V2 = {**ORDER, "properties": {**ORDER["properties"], "note": {}}}
CE_HEADERS = {"content-type": "application/cloudevents+json"}


async def create(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/event-types", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(client: httpx.AsyncClient, name: str, schema: Any) -> httpx.Response:
    return await client.post(f"/v1/event-types/{name}/schemas", json={"schema": schema})


async def publish(client: httpx.AsyncClient, body: dict[str, Any], key: str) -> httpx.Response:
    return await client.post("/v1/events", json=body, headers={"Idempotency-Key": key})


def cloudevent(event_id: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/shop",
        "type": "order.created",
        "data": data,
        **extra,
    }


# -- event types ----------------------------------------------------------------------------------


async def test_create_and_read_an_event_type(client: httpx.AsyncClient) -> None:
    created = await create(client, "order.created", description="an order was placed")
    assert created["compatibility"] == "BACKWARD"
    assert created["latest_version"] is None
    assert created["created_at"].endswith("Z")
    found = await client.get("/v1/event-types/order.created")
    assert found.status_code == 200
    assert found.json() == created


async def test_duplicate_name_is_409(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    response = await client.post("/v1/event-types", json={"name": "order.created"})
    assert_problem(response, 409)


async def test_invalid_event_types_are_422(client: httpx.AsyncClient) -> None:
    for body, loc in [
        ({"name": "has space"}, "/name"),
        ({"name": "x" * 201}, "/name"),
        ({"name": "billing/schemas/2"}, "/name"),  # would shadow /schemas/{version}
        ({"name": "ok", "compatibility": "SIDEWAYS"}, "/compatibility"),
        ({"name": "ok", "surprise": 1}, "/surprise"),
    ]:
        response = await client.post("/v1/event-types", json=body)
        assert locs(assert_problem(response, 422)) == [loc], body


async def test_every_compatibility_mode_is_accepted(client: httpx.AsyncClient) -> None:
    modes = ["NONE", "BACKWARD", "FORWARD", "FULL"]
    for mode in modes + [f"{m}_TRANSITIVE" for m in modes[1:]]:
        assert (await create(client, f"t.{mode.lower()}", compatibility=mode))[
            "compatibility"
        ] == mode


async def test_names_with_slashes_and_colons_are_addressable(client: httpx.AsyncClient) -> None:
    await create(client, "billing/invoice:paid")
    assert (await register(client, "billing/invoice:paid", ORDER)).status_code == 201
    found = await client.get("/v1/event-types/billing/invoice:paid")
    assert found.json()["latest_version"] == 1
    schema = await client.get("/v1/event-types/billing/invoice:paid/schemas/latest")
    assert schema.json() == {"version": 1, "schema": ORDER}


async def test_unknown_event_type_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/event-types/nope"), 404)
    assert_problem(await register(client, "nope", ORDER), 404)
    assert_problem(await client.get("/v1/event-types/nope/schemas/latest"), 404)


async def test_list_pages_by_name(client: httpx.AsyncClient) -> None:
    for name in ("c.type", "a.type", "b/type"):
        await create(client, name)
    first = (await client.get("/v1/event-types", params={"limit": 2})).json()
    assert [t["name"] for t in first["items"]] == ["a.type", "b/type"]
    second = (
        await client.get("/v1/event-types", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [t["name"] for t in second["items"]] == ["c.type"]
    assert second["next_cursor"] is None


async def test_list_rejects_bad_paging(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/event-types", params={"limit": 0}), 422)
    assert_problem(await client.get("/v1/event-types", params={"limit": 501}), 422)
    assert_problem(await client.get("/v1/event-types", params={"cursor": "%%%"}), 422)


async def test_every_token_reads_the_catalogue_and_only_admins_change_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """API-v2: the catalogue is shared; every token may read it."""
    token = (await client.post("/v1/tokens", json={"scope": "ingest"})).json()["token"]
    async with client_for(app, token=token) as ingest:
        assert (await ingest.get("/v1/event-types")).status_code == 200
        assert_problem(await ingest.post("/v1/event-types", json={"name": "x"}), 403)
    async with client_for(app, token=None) as anonymous:
        assert_problem(await anonymous.get("/v1/event-types/x/schemas/latest"), 401)


# -- schema versions ------------------------------------------------------------------------------


async def test_versions_are_numbered_and_readable(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    first = await register(client, "order.created", ORDER)
    assert (first.status_code, first.json()) == (201, {"version": 1})
    second = await register(client, "order.created", ORDER_V2)
    assert (second.status_code, second.json()) == (201, {"version": 2})
    one = await client.get("/v1/event-types/order.created/schemas/1")
    assert one.json() == {"version": 1, "schema": ORDER}
    latest = await client.get("/v1/event-types/order.created/schemas/latest")
    assert latest.json() == {"version": 2, "schema": ORDER_V2}
    assert (await client.get("/v1/event-types/order.created")).json()["latest_version"] == 2


async def test_an_identical_schema_answers_its_version(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    await register(client, "order.created", ORDER)
    await register(client, "order.created", ORDER_V2)
    reordered = json.loads(json.dumps(ORDER, sort_keys=True))
    again = await register(client, "order.created", reordered)
    assert (again.status_code, again.json()) == (200, {"version": 1})


async def test_missing_versions(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    assert_problem(await client.get("/v1/event-types/order.created/schemas/latest"), 404)
    await register(client, "order.created", ORDER)
    assert_problem(await client.get("/v1/event-types/order.created/schemas/2"), 404)
    for bad in ("0", "one", "-1", "99999999999"):
        response = await client.get(f"/v1/event-types/order.created/schemas/{bad}")
        assert locs(assert_problem(response, 422)) == ["path:version"], bad


async def test_an_invalid_json_schema_is_422(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    for schema, loc in [
        ({"type": "nope"}, "/schema/type"),
        ({"properties": {"a": {"minimum": "zero"}}}, "/schema/properties/a/minimum"),
        ({"$schema": "http://json-schema.org/draft-04/schema#"}, "/schema/$schema"),
        ({"$ref": "https://example.com/remote.json"}, "/schema"),
        ([1, 2], "/schema"),
    ]:
        response = await register(client, "order.created", schema)
        assert locs(assert_problem(response, 422))[0] == loc, schema
    assert_problem(await client.post("/v1/event-types/order.created/schemas", json={}), 422)


async def test_schema_bodies_are_strict_json(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    path = "/v1/event-types/order.created/schemas"
    not_json = await client.post(path, content=b"{", headers={"content-type": "application/json"})
    assert_problem(not_json, 400)
    nan = await client.post(
        path, content=b'{"schema": {"maximum": NaN}}', headers={"content-type": "application/json"}
    )
    assert_problem(nan, 400)
    assert_problem(
        await client.post(path, content=b"{}", headers={"content-type": "text/plain"}), 415
    )


async def test_draft_7_is_accepted(client: httpx.AsyncClient) -> None:
    await create(client, "legacy")
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}
    assert (await register(client, "legacy", schema)).status_code == 201
    ok = await publish(client, {"type": "legacy", "data": ["a", 1]}, "d7-ok")
    assert ok.status_code == 202, ok.text
    bad = await publish(client, {"type": "legacy", "data": [1]}, "d7-bad")
    assert locs(assert_problem(bad, 422)) == ["/data/0"]


async def test_an_incompatible_schema_is_409_with_a_reason_per_change(
    client: httpx.AsyncClient,
) -> None:
    await create(client, "order.created")
    await register(client, "order.created", ORDER)
    breaking = {
        **ORDER,
        "properties": {**ORDER["properties"], "total": {"type": "integer"}},
        "required": ["total", "currency"],
    }
    problem = assert_problem(await register(client, "order.created", breaking), 409)
    assert problem["type"] == "urn:eventrelay:problem:incompatible-schema"
    assert sorted(locs(problem)) == ["/schema/properties/total/type", "/schema/required/1"]
    assert all("version 1" in e["msg"] for e in problem["errors"])
    assert (await client.get("/v1/event-types/order.created")).json()["latest_version"] == 1


async def test_compatibility_modes_decide(client: httpx.AsyncClient) -> None:
    closed = {**ORDER, "additionalProperties": False}
    with_note = {**closed, "properties": {**closed["properties"], "note": {"type": "string"}}}
    for mode, expected in [("BACKWARD", 201), ("FORWARD", 409), ("FULL", 409), ("NONE", 201)]:
        name = f"t.{mode.lower()}"
        await create(client, name, compatibility=mode)
        await register(client, name, closed)
        response = await register(client, name, with_note)
        assert response.status_code == expected, (mode, response.text)


async def test_transitive_modes_check_every_version(client: httpx.AsyncClient) -> None:
    # Under NONE, version 2 narrowed version 1; the type then became stricter.
    for mode, expected in [("BACKWARD", 201), ("BACKWARD_TRANSITIVE", 409)]:
        name = f"t.{mode.lower()}"
        await create(client, name, compatibility="NONE")
        await register(client, name, {"type": "number"})
        await register(client, name, {"type": "integer"})
        patched = await client.patch(f"/v1/event-types/{name}", json={"compatibility": mode})
        assert patched.json()["compatibility"] == mode
        response = await register(client, name, {"type": "integer", "minimum": -(2**53)})
        assert response.status_code in (expected, 409), response.text
        again = await register(client, name, {"type": "integer", "title": "v3"})
        assert again.status_code == expected, (mode, again.text)


async def test_patch_an_event_type(client: httpx.AsyncClient) -> None:
    await create(client, "order.created", description="old")
    patched = await client.patch("/v1/event-types/order.created", json={"description": "new"})
    assert patched.json()["description"] == "new"
    assert patched.json()["compatibility"] == "BACKWARD"
    for body in ({"compatibility": None}, {"compatibility": "SIDEWAYS"}, {"name": "x"}):
        response = await client.patch("/v1/event-types/order.created", json=body)
        assert_problem(response, 422)
    assert_problem(await client.patch("/v1/event-types/nope", json={}), 404)


async def test_concurrent_registrations_get_distinct_versions(client: httpx.AsyncClient) -> None:
    await create(client, "order.created", compatibility="NONE")
    schemas = [{"type": "object", "maxProperties": n} for n in range(1, 7)]
    responses = await asyncio.gather(*(register(client, "order.created", s) for s in schemas))
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3, 4, 5, 6]


async def test_concurrent_registrations_are_each_checked(client: httpx.AsyncClient) -> None:
    # Each is compatible with version 1 but not with the other: one must be refused.
    await create(client, "order.created", compatibility="BACKWARD")
    await register(client, "order.created", {"type": "integer"})
    widen = [{"type": ["integer", "string"]}, {"type": ["integer", "boolean"]}]
    responses = await asyncio.gather(*(register(client, "order.created", s) for s in widen))
    assert sorted(r.status_code for r in responses) == [201, 409]


async def test_registrations_through_two_processes_are_each_checked(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await create(client, "order.created", compatibility="BACKWARD")
    await register(client, "order.created", {"type": "integer"})
    async with running(settings) as other:
        for round_ in range(5):
            widen = [
                {"type": ["integer", "string"], "maxLength": round_},
                {"type": ["integer", "boolean"], "title": str(round_)},
            ]
            responses = await asyncio.gather(
                register(client, "order.created", widen[0]),
                register(other, "order.created", widen[1]),
            )
            codes = sorted(r.status_code for r in responses)
            assert codes in ([201, 409], [409, 409]), [r.text for r in responses]
            versions = [r.json()["version"] for r in responses if r.status_code == 201]
            latest = (await client.get("/v1/event-types/order.created")).json()["latest_version"]
            assert versions in ([], [latest])


# -- validation at ingest -------------------------------------------------------------------------


async def with_schemas(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    await register(client, "order.created", ORDER)
    await register(client, "order.created", ORDER_V2)


async def test_valid_events_get_the_latest_version(client: httpx.AsyncClient) -> None:
    await with_schemas(client)
    response = await publish(client, {"type": "order.created", "data": {"total": 3}}, "k1")
    assert response.status_code == 202, response.text
    assert response.json()["schema_version"] == 2
    stored = (await client.get(f"/v1/events/{response.json()['id']}")).json()
    assert stored["schema_version"] == 2


async def test_an_explicit_version_is_used(client: httpx.AsyncClient) -> None:
    await with_schemas(client)
    body = {"type": "order.created", "data": {"total": 3}, "schema_version": 1}
    response = await publish(client, body, "k1")
    assert response.json()["schema_version"] == 1


async def test_invalid_data_is_422_with_pointers_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    await with_schemas(client)
    body = {"type": "order.created", "data": {"total": "x", "currency": 1}}
    problem = assert_problem(await publish(client, body, "k1"), 422)
    assert sorted(locs(problem)) == ["/data/currency", "/data/total"]
    missing = assert_problem(await publish(client, {"type": "order.created"}, "k2"), 422)
    assert locs(missing) == ["/data"]
    assert await event_count(client) == 0


async def test_schema_version_problems_are_422(client: httpx.AsyncClient) -> None:
    await with_schemas(client)
    unknown = {"type": "order.created", "data": {"total": 1}, "schema_version": 3}
    assert locs(assert_problem(await publish(client, unknown, "k1"), 422)) == ["/schema_version"]
    schemaless = {"type": "free.form", "data": 1, "schema_version": 1}
    assert locs(assert_problem(await publish(client, schemaless, "k2"), 422)) == ["/schema_version"]
    assert await event_count(client) == 0


async def test_types_without_schemas_take_anything(client: httpx.AsyncClient) -> None:
    await create(client, "free.form")
    response = await publish(client, {"type": "free.form", "data": [1, "two"]}, "k1")
    assert response.status_code == 202
    assert response.json()["schema_version"] is None


async def test_batch_names_every_invalid_item_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    await with_schemas(client)
    items = [
        {"idempotency_key": "b0", "type": "order.created", "data": {"total": 1}},
        {"idempotency_key": "b1", "type": "order.created", "data": {"total": "x"}},
        {"idempotency_key": "b2", "type": "other", "data": {}},
        {"idempotency_key": "b3", "type": "order.created", "data": {}},
    ]
    response = await client.post("/v1/events/batch", json={"events": items})
    assert sorted(locs(assert_problem(response, 422))) == ["/events/1/data/total", "/events/3/data"]
    assert await event_count(client) == 0


async def test_a_replay_keeps_its_version_after_a_newer_one(client: httpx.AsyncClient) -> None:
    await create(client, "order.created")
    await register(client, "order.created", ORDER)
    body = {"type": "order.created", "data": {"total": 1}}
    first = await publish(client, body, "k1")
    await register(client, "order.created", ORDER_V2)
    again = await publish(client, body, "k1")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert again.json()["schema_version"] == 1


# -- CloudEvents ----------------------------------------------------------------------------------


async def post_cloudevent(client: httpx.AsyncClient, body: Any, **headers: str) -> httpx.Response:
    return await client.post("/v1/events", content=json.dumps(body), headers=CE_HEADERS | headers)


async def test_structured_cloudevent_is_validated(client: httpx.AsyncClient) -> None:
    await with_schemas(client)
    response = await post_cloudevent(client, cloudevent("1", {"total": "x"}))
    assert locs(assert_problem(response, 422)) == ["/data/total"]
    versioned = cloudevent("2", {"total": 1}, schemaversion=1)
    ok = await post_cloudevent(client, versioned)
    assert ok.status_code == 202, ok.text
    assert ok.json()["schema_version"] == 1
    unknown = await post_cloudevent(client, cloudevent("3", {"total": 1}, schemaversion=9))
    assert locs(assert_problem(unknown, 422)) == ["/schemaversion"]


async def test_binary_cloudevent_is_validated(client: httpx.AsyncClient) -> None:
    await with_schemas(client)
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "b1",
        "ce-source": "/shop",
        "ce-type": "order.created",
        "ce-partitionkey": "customer-1",
    }
    bad = await client.post("/v1/events", content=b'{"total": "x"}', headers=headers)
    assert locs(assert_problem(bad, 422)) == ["/total"]
    ok = await client.post("/v1/events", content=b'{"total": 2}', headers=headers)
    assert ok.status_code == 202, ok.text
    assert (ok.json()["key"], ok.json()["schema_version"]) == ("customer-1", 2)


async def test_cloudevent_batch_is_validated_atomically(client: httpx.AsyncClient) -> None:
    await with_schemas(client)
    batch = [cloudevent("1", {"total": 1}), cloudevent("2", {"total": "x"})]
    response = await post_cloudevent(
        client, batch, **{"content-type": "application/cloudevents-batch+json"}
    )
    assert locs(assert_problem(response, 422)) == ["/1/data/total"]
    assert await event_count(client) == 0


async def test_cloudevent_pairs_are_idempotency_keys(client: httpx.AsyncClient) -> None:
    first = await post_cloudevent(client, cloudevent("1", {"n": 1}))
    assert first.status_code == 202, first.text
    again = await post_cloudevent(client, cloudevent("1", {"n": 1}))
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    changed = await post_cloudevent(client, cloudevent("1", {"n": 2}))
    assert locs(assert_problem(changed, 422)) == ["/id"]
    other_source = await post_cloudevent(client, cloudevent("1", {"n": 2}) | {"source": "/b"})
    assert other_source.status_code == 202
    assert await event_count(client) == 2


async def test_a_header_key_replaces_the_pair(client: httpx.AsyncClient) -> None:
    first = await post_cloudevent(client, cloudevent("1", {"n": 1}), **{"Idempotency-Key": "h"})
    second = await post_cloudevent(client, cloudevent("2", {"n": 1}), **{"Idempotency-Key": "h"})
    assert assert_problem(second, 422)
    assert first.status_code == 202
    assert await event_count(client) == 1


async def test_cloudevent_batch_replays_items(client: httpx.AsyncClient) -> None:
    batch_type = {"content-type": "application/cloudevents-batch+json"}
    first = await post_cloudevent(client, [cloudevent("1", 1), cloudevent("2", 2)], **batch_type)
    assert first.status_code == 200, first.text
    second = await post_cloudevent(client, [cloudevent("2", 2), cloudevent("3", 3)], **batch_type)
    items = second.json()["items"]
    assert [i["replayed"] for i in items] == [True, False]
    assert items[0]["id"] == first.json()["items"][1]["id"]
    assert await event_count(client) == 3


async def test_cloudevents_without_required_attributes_are_400(client: httpx.AsyncClient) -> None:
    response = await post_cloudevent(client, {"specversion": "1.0", "type": "t"})
    assert sorted(locs(assert_problem(response, 400))) == ["/id", "/source"]
    binary = await client.post(
        "/v1/events",
        content=b"{}",
        headers={"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "t"},
    )
    assert locs(assert_problem(binary, 400)) == ["header:ce-id"]
    assert await event_count(client) == 0


# -- other processes ------------------------------------------------------------------------------


async def wait_for_status(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, timeout: float
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        response = await publish(client, body, f"poll-{time.monotonic()}-{attempt}")
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.05)


async def test_another_process_sees_a_new_schema_within_about_a_second(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await create(client, "order.created")
    async with running(settings) as other:
        before = await publish(other, {"type": "order.created", "data": {"total": "x"}}, "o1")
        assert before.status_code == 202  # no schema yet: anything goes
        await register(client, "order.created", ORDER)
        started = time.monotonic()
        invalid = {"type": "order.created", "data": {"total": "x"}}
        refused = await wait_for_status(other, invalid, 422, timeout=3.0)
        assert refused.status_code == 422, refused.text
        assert time.monotonic() - started < 1.5
        explicit = {"type": "order.created", "data": {"total": 1}, "schema_version": 1}
        await register(client, "order.created", ORDER_V2)
        # A version the cache does not know is looked up at once.
        named = {**explicit, "schema_version": 2}
        accepted = await wait_for_status(other, named, 202, timeout=0.5)
        assert accepted.status_code == 202, accepted.text
