"""Tenant isolation, tested as a security boundary, on both databases.

API-v2, Tenants. Tenant A's tokens are turned on tenant B's objects through
every operation of the OpenAPI document, with every kind of ID a request can
carry: path IDs, query filters, cursors minted in B, batch items and
idempotency keys, redrive filters, replay. Each answer must be a 404 (never a
403 that would confirm the object exists), a 403 for a header naming another
tenant, or a result holding nothing of B's; and B, read back at the end, must
be exactly as it was.

``CASES`` has one entry per operation; an operation of the OpenAPI document
that is not in it fails :func:`test_every_operation_is_in_the_table`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.integration.conftest import DeliveryKit
from tests.integration.support import assert_problem, client_for

A, B = "tenant-a", "tenant-b"
HOOK = "http://127.0.0.1:9/hook"
EVENT = {"type": "order.created", "key": "cust-1", "data": {"n": 1}}
# Operations that take no token: they hold nothing of any tenant.
UNAUTHENTICATED = {("GET", "/healthz"), ("GET", "/readyz")}


@dataclass
class World:
    root: httpx.AsyncClient  # global admin, no header
    a_admin: httpx.AsyncClient
    a_ingest: httpx.AsyncClient
    b_admin: httpx.AsyncClient
    sub_a: str = ""
    sub_b: str = ""
    events_a: list[str] = field(default_factory=list)
    events_b: list[str] = field(default_factory=list)
    dead_b: list[str] = field(default_factory=list)
    token_b: str = ""
    event_cursor_b: str = ""
    dlq_cursor_b: str = ""

    @property
    def path_ids(self) -> dict[str, str]:
        return {
            "subscription_id": self.sub_b,
            "event_id": self.events_b[0],
            "delivery_id": self.dead_b[0],
            "token_id": self.token_b,
            "tenant_id": B,
            "name": EVENT["type"],
            "version": "latest",
        }

    def b_ids(self) -> set[str]:
        return {self.sub_b, self.token_b, *self.events_b, *self.dead_b}


async def _json(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _token(root: httpx.AsyncClient, scope: str, tenant: str) -> tuple[str, str]:
    body = await _json(
        await root.post("/v1/tokens", json={"scope": scope, "tenant_id": tenant}), 201
    )
    assert body["tenant_id"] == tenant
    return body["id"], body["token"]


async def _ingest(client: httpx.AsyncClient, key: str) -> str:
    body = await _json(
        await client.post("/v1/events", json=EVENT, headers={"Idempotency-Key": key}), 202
    )
    return str(body["id"])


async def build_world(app: FastAPI, root: httpx.AsyncClient, kit: DeliveryKit) -> World:
    for tenant in (A, B):
        await _json(await root.post("/v1/tenants", json={"id": tenant, "name": tenant}), 201)
    await _json(await root.post("/v1/event-types", json={"name": EVENT["type"]}), 201)
    _, a_admin = await _token(root, "admin", A)
    _, a_ingest = await _token(root, "ingest", A)
    token_b, b_admin = await _token(root, "admin", B)
    _, b_ingest = await _token(root, "ingest", B)
    world = World(
        root, client_for(app, a_admin), client_for(app, a_ingest), client_for(app, b_admin)
    )
    world.token_b = token_b
    b_ingest_client = client_for(app, b_ingest)
    sub = await _json(
        await world.b_admin.post("/v1/subscriptions", json={"url": HOOK, "ordering": "none"}), 201
    )
    world.sub_b = sub["id"]
    world.events_b = [await _ingest(b_ingest_client, f"key-{n}") for n in range(3)]
    await b_ingest_client.aclose()
    # B's deliveries die (nothing of A's exists yet to be claimed with them).
    for claimed in await kit.claim():
        await kit.finish(claimed, "dead", status_code=500)
    page = await _json(await world.b_admin.get("/v1/dlq", params={"limit": 500}))
    world.dead_b = [item["id"] for item in page["items"]]
    assert len(world.dead_b) == 3
    world.event_cursor_b = (await _json(await world.b_admin.get("/v1/events?limit=1")))[
        "next_cursor"
    ]
    world.dlq_cursor_b = (await _json(await world.b_admin.get("/v1/dlq?limit=1")))["next_cursor"]
    assert world.event_cursor_b
    assert world.dlq_cursor_b
    sub = await _json(await world.a_admin.post("/v1/subscriptions", json={"url": HOOK}), 201)
    world.sub_a = sub["id"]
    # The same idempotency key and body as B's first event: a new event in A.
    world.events_a = [await _ingest(world.a_ingest, "key-0")]
    assert world.events_a[0] not in world.events_b
    return world


async def snapshot_b(world: World) -> dict[str, Any]:
    """Everything B has, as B's own admin reads it."""
    c = world.b_admin
    events = await _json(await c.get("/v1/events", params={"limit": 500}))
    subs = await _json(await c.get("/v1/subscriptions", params={"limit": 500}))
    return {
        "stats": await _json(await c.get("/v1/stats")),
        "subscriptions": subs,
        "secrets": [
            await _json(await c.get(f"/v1/subscriptions/{s['id']}/secret")) for s in subs["items"]
        ],
        "events": events,
        "details": [await _json(await c.get(f"/v1/events/{e}")) for e in world.events_b],
        "attempts": [await _json(await c.get(f"/v1/events/{e}/attempts")) for e in world.events_b],
        "dlq": await _json(await c.get("/v1/dlq", params={"limit": 500})),
        "dead": [await _json(await c.get(f"/v1/dlq/{d}")) for d in world.dead_b],
    }


def _nothing_of_b(world: World, body: Any) -> None:
    text = str(body)
    leaked = [i for i in world.b_ids() if i in text]
    assert not leaked, f"{leaked} of tenant B in {text}"


async def _not_found(response: httpx.Response) -> None:
    assert_problem(response, 404)


# -- the cases, one per operation ----------------------------------------------


async def list_events(w: World) -> None:
    for params in (
        {},
        {"type": EVENT["type"]},
        {"key": EVENT["key"]},
        {"order": "asc"},
        {"cursor": w.event_cursor_b},
        {"cursor": w.event_cursor_b, "order": "asc"},
    ):
        body = await _json(await w.a_admin.get("/v1/events", params=params))
        _nothing_of_b(w, body)


async def ingest_one(w: World) -> None:
    for key in ("key-1", "key-2"):  # B's keys with B's body: new events in A
        body = await _json(
            await w.a_ingest.post("/v1/events", json=EVENT, headers={"Idempotency-Key": key}), 202
        )
        assert body["id"] not in w.events_b
        w.events_a.append(body["id"])


async def ingest_batch(w: World) -> None:
    items = [EVENT | {"idempotency_key": f"key-{n}"} for n in range(3)]
    body = await _json(await w.a_ingest.post("/v1/events/batch", json={"events": items}))
    for item in body["items"]:
        assert item["id"] not in w.events_b
    w.events_a += [i["id"] for i in body["items"] if not i["replayed"]]


async def event_detail(w: World) -> None:
    for event_id in w.events_b:
        await _not_found(await w.a_admin.get(f"/v1/events/{event_id}"))


async def event_attempts(w: World) -> None:
    for event_id in w.events_b:
        await _not_found(await w.a_admin.get(f"/v1/events/{event_id}/attempts"))


async def stats(w: World) -> None:
    body = await _json(await w.a_admin.get("/v1/stats"))
    assert body["events"] == len(w.events_a)
    assert body["deliveries"]["dead"] == 0


async def list_subscriptions(w: World) -> None:
    for params in ({}, {"cursor": w.sub_b}):
        _nothing_of_b(w, await _json(await w.a_admin.get("/v1/subscriptions", params=params)))


async def create_subscription(w: World) -> None:
    body = await _json(await w.a_admin.post("/v1/subscriptions", json={"url": HOOK}), 201)
    assert body["id"] in str(await _json(await w.a_admin.get("/v1/subscriptions")))


async def subscription_get(w: World) -> None:
    await _not_found(await w.a_admin.get(f"/v1/subscriptions/{w.sub_b}"))


async def subscription_patch(w: World) -> None:
    await _not_found(
        await w.a_admin.patch(f"/v1/subscriptions/{w.sub_b}", json={"status": "paused"})
    )


async def subscription_delete(w: World) -> None:
    await _not_found(await w.a_admin.delete(f"/v1/subscriptions/{w.sub_b}"))


async def subscription_secret(w: World) -> None:
    await _not_found(await w.a_admin.get(f"/v1/subscriptions/{w.sub_b}/secret"))


async def subscription_rotate(w: World) -> None:
    await _not_found(await w.a_admin.post(f"/v1/subscriptions/{w.sub_b}/rotate-secret"))


async def subscription_replay(w: World) -> None:
    window = {"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    await _not_found(await w.a_admin.post(f"/v1/subscriptions/{w.sub_b}/replay", json=window))
    # A's own subscription replays A's events only.
    body = await _json(
        await w.a_admin.post(f"/v1/subscriptions/{w.sub_a}/replay", json=window), 202
    )
    assert body["replayed"] == len(w.events_a)


async def list_dlq(w: World) -> None:
    for params in (
        {},
        {"subscription_id": w.sub_b},
        {"event_type": EVENT["type"]},
        {"cursor": w.dlq_cursor_b},
    ):
        body = await _json(await w.a_admin.get("/v1/dlq", params=params))
        assert body["items"] == [], params


async def dlq_redrive_matching(w: World) -> None:
    for filters in ({}, {"subscription_id": w.sub_b}, {"event_type": EVENT["type"]}):
        body = await _json(await w.a_admin.post("/v1/dlq/redrive", json=filters))
        assert body == {"redriven": 0}, filters


async def dlq_show(w: World) -> None:
    for delivery_id in w.dead_b:
        await _not_found(await w.a_admin.get(f"/v1/dlq/{delivery_id}"))


async def dlq_redrive(w: World) -> None:
    await _not_found(await w.a_admin.post(f"/v1/dlq/{w.dead_b[0]}/redrive"))


async def dlq_discard(w: World) -> None:
    await _not_found(await w.a_admin.delete(f"/v1/dlq/{w.dead_b[0]}"))


async def create_token(w: World) -> None:
    for body in ({"scope": "admin", "tenant_id": B}, {"scope": "ingest", "tenant_id": "nope"}):
        assert_problem(await w.a_admin.post("/v1/tokens", json=body), 403)
    made = await _json(await w.a_admin.post("/v1/tokens", json={"scope": "ingest"}), 201)
    assert made["tenant_id"] == A


async def list_tokens(w: World) -> None:
    body = await _json(await w.a_admin.get("/v1/tokens", params={"limit": 500}))
    assert body["items"]
    assert {t["tenant_id"] for t in body["items"]} == {A}
    _nothing_of_b(w, body)


async def revoke_token(w: World) -> None:
    await _not_found(await w.a_admin.delete(f"/v1/tokens/{w.token_b}"))


async def filter_test(w: World) -> None:
    # Stateless: the answer depends on the body alone, whichever tenant's IDs it names.
    body = {"filter": {"key": w.sub_b}, "event": {"type": EVENT["type"], "key": w.sub_b}}
    answer = await _json(await w.a_admin.post("/v1/filters/test", json=body))
    assert answer == {"matches": True}
    assert_problem(await w.a_ingest.post("/v1/filters/test", json=body), 403)


def _forbidden(method: str, path: str, body: Any = None) -> Callable[[World], Awaitable[None]]:
    """A tenant's admin token may not call a global operation at all."""

    async def case(w: World) -> None:
        url = path.format(**w.path_ids)
        for client in (w.a_admin, w.a_ingest):
            response = await client.request(method, url, json=body)
            assert_problem(response, 403)

    return case


def _shared_read(path: str) -> Callable[[World], Awaitable[None]]:
    """The catalogue of event types is shared: every token reads it."""

    async def case(w: World) -> None:
        for client in (w.a_admin, w.a_ingest):
            await _json(await client.get(path.format(**w.path_ids)))

    return case


async def _health(w: World, path: str) -> None:
    body = await _json(await w.root.get(path))
    _nothing_of_b(w, body)


CASES: dict[tuple[str, str], Callable[[World], Awaitable[None]]] = {
    ("GET", "/healthz"): lambda w: _health(w, "/healthz"),
    ("GET", "/readyz"): lambda w: _health(w, "/readyz"),
    ("POST", "/v1/events"): ingest_one,
    ("GET", "/v1/events"): list_events,
    ("POST", "/v1/events/batch"): ingest_batch,
    ("GET", "/v1/events/{event_id}"): event_detail,
    ("GET", "/v1/events/{event_id}/attempts"): event_attempts,
    ("GET", "/v1/stats"): stats,
    ("POST", "/v1/subscriptions"): create_subscription,
    ("GET", "/v1/subscriptions"): list_subscriptions,
    ("GET", "/v1/subscriptions/{subscription_id}"): subscription_get,
    ("PATCH", "/v1/subscriptions/{subscription_id}"): subscription_patch,
    ("DELETE", "/v1/subscriptions/{subscription_id}"): subscription_delete,
    ("GET", "/v1/subscriptions/{subscription_id}/secret"): subscription_secret,
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): subscription_rotate,
    ("POST", "/v1/subscriptions/{subscription_id}/replay"): subscription_replay,
    ("GET", "/v1/dlq"): list_dlq,
    ("POST", "/v1/dlq/redrive"): dlq_redrive_matching,
    ("GET", "/v1/dlq/{delivery_id}"): dlq_show,
    ("POST", "/v1/dlq/{delivery_id}/redrive"): dlq_redrive,
    ("DELETE", "/v1/dlq/{delivery_id}"): dlq_discard,
    ("POST", "/v1/filters/test"): filter_test,
    ("POST", "/v1/tokens"): create_token,
    ("GET", "/v1/tokens"): list_tokens,
    ("DELETE", "/v1/tokens/{token_id}"): revoke_token,
    ("POST", "/v1/tenants"): _forbidden("POST", "/v1/tenants", {"name": "x"}),
    ("GET", "/v1/tenants"): _forbidden("GET", "/v1/tenants"),
    ("GET", "/v1/tenants/{tenant_id}"): _forbidden("GET", "/v1/tenants/{tenant_id}"),
    ("PATCH", "/v1/tenants/{tenant_id}"): _forbidden(
        "PATCH", "/v1/tenants/{tenant_id}", {"max_subscriptions": 0}
    ),
    ("DELETE", "/v1/tenants/{tenant_id}"): _forbidden("DELETE", "/v1/tenants/{tenant_id}"),
    ("POST", "/v1/tenants/{tenant_id}/portal-links"): _forbidden(
        "POST", "/v1/tenants/{tenant_id}/portal-links"
    ),
    ("POST", "/v1/event-types"): _forbidden("POST", "/v1/event-types", {"name": "x.y"}),
    ("GET", "/v1/event-types"): _shared_read("/v1/event-types"),
    ("GET", "/v1/event-types/{name}"): _shared_read("/v1/event-types/{name}"),
    ("PATCH", "/v1/event-types/{name}"): _forbidden(
        "PATCH", "/v1/event-types/{name}", {"description": "x"}
    ),
    ("POST", "/v1/event-types/{name}/schemas"): _forbidden(
        "POST", "/v1/event-types/{name}/schemas", {"schema": {"type": "object"}}
    ),
    ("GET", "/v1/event-types/{name}/schemas/{version}"): lambda w: _schema_read(w),
}


async def _schema_read(w: World) -> None:
    # No schema registered: the same 404 for every token; with one, every token reads it.
    for client in (w.a_admin, w.a_ingest):
        url = "/v1/event-types/{name}/schemas/latest".format(**w.path_ids)
        assert_problem(await client.get(url), 404)


def _operations(app: FastAPI) -> set[tuple[str, str]]:
    document = app.openapi()
    found = set()
    for path, item in document["paths"].items():
        for method in item:
            found.add((method.upper(), path.replace("{name:path}", "{name}")))
    return found


async def test_every_operation_is_in_the_table(app: FastAPI) -> None:
    operations = _operations(app)
    assert operations - set(CASES) == set(), "operations with no isolation case"
    assert set(CASES) - operations == set(), "cases of operations that no longer exist"


@pytest.fixture
async def world(app: FastAPI, client: httpx.AsyncClient, kit: DeliveryKit) -> Any:
    built = await build_world(app, client, kit)
    yield built
    for c in (built.a_admin, built.a_ingest, built.b_admin):
        await c.aclose()


async def test_a_tenant_reaches_nothing_of_another(app: FastAPI, world: World) -> None:
    before = await snapshot_b(world)
    for operation in sorted(_operations(app)):
        await CASES[operation](world)
    await asyncio.sleep(0)
    after = await snapshot_b(world)
    assert after == before
    # B's token still works, and B's own reads still show B's objects.
    assert {i["id"] for i in after["dlq"]["items"]} == set(world.dead_b)


async def test_a_header_naming_another_tenant_is_403(app: FastAPI, world: World) -> None:
    """For every authenticated operation: tenant A's tokens naming B, or a tenant
    that does not exist, are refused before anything is read or changed."""
    before = await snapshot_b(world)
    for method, path in sorted(_operations(app) - UNAUTHENTICATED):
        url = path.format(**world.path_ids)
        for named in (B, "no-such-tenant"):
            for client in (world.a_admin, world.a_ingest):
                response = await client.request(
                    method, url, json={}, headers={"Eventrelay-Tenant": named}
                )
                assert_problem(response, 403)
    assert await snapshot_b(world) == before


async def test_a_global_token_naming_an_unknown_tenant_is_404(app: FastAPI, world: World) -> None:
    for method, path in sorted(_operations(app) - UNAUTHENTICATED):
        url = path.format(**world.path_ids)
        response = await world.root.request(
            method, url, json={}, headers={"Eventrelay-Tenant": "no-such-tenant"}
        )
        problem = assert_problem(response, 404)
        assert problem["type"].endswith(":unknown-tenant"), (method, path)
