"""Tenants over the API on both databases: management, the default tenant,
per-tenant idempotency and stats, the limits, and deletion with its background
removal (API-v2, Tenants)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.store import schema
from app.store.database import Database
from app.store.tenants import remove_batch
from app.worker.tenant_removal import TenantRemoval
from tests.integration.support import assert_problem, client_for

HOOK = "http://127.0.0.1:9/hook"
EVENT = {"type": "order.created", "data": {"n": 1}}


async def _json(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _tenant(client: httpx.AsyncClient, tenant_id: str, **fields: Any) -> dict[str, Any]:
    body = {"id": tenant_id, "name": f"Tenant {tenant_id}"} | fields
    return dict(await _json(await client.post("/v1/tenants", json=body), 201))


async def _token(client: httpx.AsyncClient, tenant_id: str, scope: str = "admin") -> str:
    body = await _json(
        await client.post("/v1/tokens", json={"scope": scope, "tenant_id": tenant_id}), 201
    )
    return str(body["token"])


def _in(tenant_id: str) -> dict[str, str]:
    return {"Eventrelay-Tenant": tenant_id}


async def _post_event(client: httpx.AsyncClient, key: str, tenant: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} | (_in(tenant) if tenant else {})
    return await client.post("/v1/events", json=EVENT, headers=headers)


async def _rows(db: Database, tenant_id: str) -> dict[str, int]:
    counts = {}
    async with db.read() as conn:
        for table in (
            schema.events,
            schema.deliveries,
            schema.subscriptions,
            schema.idempotency_keys,
            schema.tokens,
            schema.tenants,
        ):
            column = table.c.id if table is schema.tenants else table.c.tenant_id
            query = select(func.count()).select_from(table).where(column == tenant_id)
            counts[table.name] = int((await conn.execute(query)).scalar_one())
    return counts


async def test_the_default_tenant_exists_and_holds_what_names_no_tenant(
    client: httpx.AsyncClient,
) -> None:
    assert (await _post_event(client, "k1")).status_code == 202
    default = await _json(await client.get("/v1/tenants/default"))
    assert default["name"] == "Default"
    assert default["stats"]["events"] == 1
    assert default["stats"] == await _json(await client.get("/v1/stats"))
    listed = await _json(await client.get("/v1/tenants"))
    assert [t["id"] for t in listed["items"]] == ["default"]
    assert_problem(await client.delete("/v1/tenants/default"), 409)


async def test_create_read_update_list(client: httpx.AsyncClient) -> None:
    made = await _tenant(client, "Acme.Corp-42", metadata={"plan": "gold"})
    assert made["id"] == "Acme.Corp-42"
    assert made["metadata"] == {"plan": "gold"}
    assert made["ingest_rate_per_second"] is None
    assert made["max_subscriptions"] is None
    assert_problem(await client.post("/v1/tenants", json={"id": "Acme.Corp-42", "name": "x"}), 409)
    # IDs are case-sensitive.
    await _tenant(client, "acme.corp-42")
    generated = await _json(await client.post("/v1/tenants", json={"name": "g"}), 201)
    assert generated["id"].startswith("ten_")
    patched = await _json(
        await client.patch(
            "/v1/tenants/Acme.Corp-42",
            json={"name": "Acme", "ingest_rate_per_second": 5, "max_subscriptions": 3},
        )
    )
    assert (patched["name"], patched["ingest_rate_per_second"], patched["max_subscriptions"]) == (
        "Acme",
        5,
        3,
    )
    cleared = await _json(
        await client.patch("/v1/tenants/Acme.Corp-42", json={"ingest_rate_per_second": None})
    )
    assert cleared["ingest_rate_per_second"] is None
    assert cleared["max_subscriptions"] == 3
    first = await _json(await client.get("/v1/tenants", params={"limit": 2}))
    rest = await _json(await client.get("/v1/tenants", params={"cursor": first["next_cursor"]}))
    ids = [t["id"] for t in first["items"] + rest["items"]]
    assert ids == sorted(ids)
    assert len(ids) == 4
    assert rest["next_cursor"] is None
    assert_problem(await client.get("/v1/tenants/nope"), 404)
    assert_problem(await client.patch("/v1/tenants/nope", json={"name": "x"}), 404)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"id": "-starts-with-a-dash", "name": "x"},
        {"id": "has space", "name": "x"},
        {"id": "x" * 65, "name": "x"},
        {"name": "x", "metadata": {"n": 1}},
        {"name": "x", "metadata": {str(i): "v" for i in range(51)}},
        {"name": "x", "other": 1},
    ],
)
async def test_bad_tenants_are_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    assert_problem(await client.post("/v1/tenants", json=body), 422)


@pytest.mark.parametrize(
    "body", [{"ingest_rate_per_second": 0}, {"max_subscriptions": -1}, {"name": None}]
)
async def test_bad_patches_are_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await _tenant(client, "t1")
    assert_problem(await client.patch("/v1/tenants/t1", json=body), 422)


async def test_idempotency_keys_and_stats_are_per_tenant(client: httpx.AsyncClient) -> None:
    await _tenant(client, "t1")
    first = await _json(await _post_event(client, "same"), 202)
    other = await _json(await _post_event(client, "same", "t1"), 202)
    assert first["id"] != other["id"]
    again = await _post_event(client, "same", "t1")
    assert again.json()["id"] == other["id"]
    assert again.headers["idempotent-replayed"] == "true"
    stats = await _json(await client.get("/v1/stats", headers=_in("t1")))
    assert stats["events"] == 1
    assert (await _json(await client.get("/v1/tenants/t1")))["stats"] == stats


async def test_max_subscriptions_is_409(client: httpx.AsyncClient) -> None:
    await _tenant(client, "t1")
    await client.patch("/v1/tenants/t1", json={"max_subscriptions": 1})
    await _json(await client.post("/v1/subscriptions", json={"url": HOOK}, headers=_in("t1")), 201)
    over = await client.post("/v1/subscriptions", json={"url": HOOK}, headers=_in("t1"))
    assert_problem(over, 409)
    # Other tenants are not counted against it.
    await _json(await client.post("/v1/subscriptions", json={"url": HOOK}), 201)
    stats = await _json(await client.get("/v1/stats", headers=_in("t1")))
    assert stats["subscriptions"] == 1


async def test_the_ingest_rate_is_a_bucket_refusing_with_429(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await _tenant(client, "t1")
    await _json(await client.patch("/v1/tenants/t1", json={"ingest_rate_per_second": 0.5}))
    ingest = client_for(app, await _token(client, "t1", "ingest"))
    # A bucket holds max(1, rate) tokens: one event now, the next in two seconds.
    await _json(await _post_event(ingest, "k1"), 202)
    refused = await _post_event(ingest, "k2")
    problem = assert_problem(refused, 429)
    assert refused.headers["retry-after"] == "2"
    assert "rate" in problem["detail"]
    # A batch larger than the bucket can ever hold is refused whole.
    batch = {"events": [EVENT | {"idempotency_key": f"b{i}"} for i in range(2)]}
    assert_problem(await ingest.post("/v1/events/batch", json=batch), 429)
    stats = await _json(await client.get("/v1/stats", headers=_in("t1")))
    assert stats["events"] == 1
    # Other tenants are not limited by it.
    for n in range(5):
        await _json(await _post_event(client, f"d{n}"), 202)
    await ingest.aclose()


async def test_a_batch_takes_one_token_per_event(app: FastAPI, client: httpx.AsyncClient) -> None:
    await _tenant(client, "t1")
    await _json(await client.patch("/v1/tenants/t1", json={"ingest_rate_per_second": 3}))
    batch = {"events": [EVENT | {"idempotency_key": f"b{i}"} for i in range(2)]}
    await _json(await client.post("/v1/events/batch", json=batch, headers=_in("t1")))
    # One token left: a batch of two is refused whole, nothing stored.
    batch = {"events": [EVENT | {"idempotency_key": f"c{i}"} for i in range(2)]}
    refused = await client.post("/v1/events/batch", json=batch, headers=_in("t1"))
    assert_problem(refused, 429)
    assert refused.headers["retry-after"] == "1"
    assert (await _json(await client.get("/v1/stats", headers=_in("t1"))))["events"] == 2


async def test_replay_takes_no_ingest_tokens(client: httpx.AsyncClient) -> None:
    await _tenant(client, "t1")
    sub = await _json(
        await client.post("/v1/subscriptions", json={"url": HOOK}, headers=_in("t1")), 201
    )
    await _json(await client.patch("/v1/tenants/t1", json={"ingest_rate_per_second": 1}))
    await _json(await _post_event(client, "k1", "t1"), 202)
    assert_problem(await _post_event(client, "k2", "t1"), 429)
    window = {"since": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()}
    replayed = await client.post(
        f"/v1/subscriptions/{sub['id']}/replay", json=window, headers=_in("t1")
    )
    assert (await _json(replayed, 202)) == {"replayed": 1}


async def test_a_tenant_token_is_confined(app: FastAPI, client: httpx.AsyncClient) -> None:
    await _tenant(client, "t1")
    admin = client_for(app, await _token(client, "t1"))
    sub = await _json(await admin.post("/v1/subscriptions", json={"url": HOOK}), 201)
    # Its objects are the tenant's, as a global token naming the tenant sees them.
    await _json(await client.get(f"/v1/subscriptions/{sub['id']}", headers=_in("t1")))
    assert_problem(await client.get(f"/v1/subscriptions/{sub['id']}"), 404)
    # Naming its own tenant is allowed; nothing global is.
    await _json(await admin.get("/v1/stats", headers=_in("t1")))
    assert_problem(await admin.get("/v1/tenants"), 403)
    assert_problem(await admin.post("/v1/event-types", json={"name": "x"}), 403)
    await admin.aclose()


async def test_delete_hides_at_once_and_removes_in_the_background(
    app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    await _tenant(client, "gone")
    token = await _token(client, "gone")
    admin = client_for(app, token)
    sub = await _json(await admin.post("/v1/subscriptions", json={"url": HOOK}), 201)
    events = [(await _json(await _post_event(admin, f"k{n}"), 202))["id"] for n in range(7)]
    # The default tenant's rows must survive the removal.
    await _json(await client.post("/v1/subscriptions", json={"url": HOOK}), 201)
    await _json(await _post_event(client, "k0"), 202)
    kept = await _json(await client.get("/v1/stats"))

    assert (await client.delete("/v1/tenants/gone")).status_code == 202
    # At once: its token is 401, the tenant unknown, its objects unreachable.
    assert_problem(await admin.get(f"/v1/subscriptions/{sub['id']}"), 401)
    unknown = assert_problem(await client.get("/v1/stats", headers=_in("gone")), 404)
    assert unknown["type"].endswith(":unknown-tenant")
    assert_problem(await client.get("/v1/tenants/gone"), 404)
    assert_problem(await client.delete("/v1/tenants/gone"), 404)
    assert "gone" not in str(await _json(await client.get("/v1/tenants")))
    # The ID stays taken while the rows are removed.
    assert_problem(await client.post("/v1/tenants", json={"id": "gone", "name": "x"}), 409)

    # Bounded batches: each takes at most its size of one kind of row.
    rows = await _rows(db, "gone")
    assert rows["events"] == 7
    assert rows["deliveries"] == 7
    assert rows["tenants"] == 1
    assert await remove_batch(db, "gone", 3) == 3
    assert (await _rows(db, "gone"))["events"] == 4
    await TenantRemoval(db, batch=3, pause_seconds=0).run_once()
    assert await _rows(db, "gone") == dict.fromkeys(rows, 0)

    assert await _json(await client.get("/v1/stats")) == kept
    again = await _tenant(client, "gone")
    assert again["id"] == "gone"
    for event_id in events:
        assert_problem(await client.get(f"/v1/events/{event_id}", headers=_in("gone")), 404)
    assert (await _json(await client.get("/v1/stats", headers=_in("gone"))))["events"] == 0
    await admin.aclose()
