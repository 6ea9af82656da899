"""Deliveries made at ingest: fan-out to matching subscriptions, paused ones
holding theirs, disabled ones getting none (API.md, Subscriptions and Events)."""

from __future__ import annotations

from typing import Any

import httpx

from app.store.work import Claimed
from tests.integration.conftest import DeliveryKit


async def subscribe(client: httpx.AsyncClient, **body: Any) -> str:
    body.setdefault("url", "http://8.8.8.8/hooks")
    response = await client.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.text
    subscription_id: str = response.json()["id"]
    return subscription_id


async def set_status(client: httpx.AsyncClient, subscription_id: str, status: str) -> None:
    response = await client.patch(f"/v1/subscriptions/{subscription_id}", json={"status": status})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == status


async def send(client: httpx.AsyncClient, idempotency_key: str, **event: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/events", json=event, headers={"Idempotency-Key": idempotency_key}
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def subscriptions_of(claimed: list[Claimed]) -> list[str]:
    return sorted(c.subscription_id for c in claimed)


async def test_fan_out_to_matching_subscriptions(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    orders = await subscribe(client, event_types=["order.*"])
    everything = await subscribe(client)
    await subscribe(client, event_types=["invoice.*", "order"])

    accepted = await send(client, "k1", type="order.created", key="c-42", data={"total": 42})
    assert accepted["deliveries"] == 2

    rows = await kit.deliveries_of(accepted["id"])
    assert sorted(r["subscription_id"] for r in rows) == sorted([orders, everything])
    assert all(
        (r["status"], r["attempts"], r["event_type"], r["ordering_key"])
        == ("pending", 0, "order.created", "c-42")
        for r in rows
    )
    assert len({r["id"] for r in rows}) == 2

    shown = (await client.get(f"/v1/events/{accepted['id']}")).json()["deliveries"]
    assert sorted(d["subscription_id"] for d in shown) == sorted([orders, everything])
    assert {d["status"] for d in shown} == {"pending"}

    stats = (await client.get("/v1/stats")).json()
    assert stats["deliveries"]["pending"] == 2

    other = await send(client, "k2", type="shipment.sent")
    assert other["deliveries"] == 1  # only "*"
    assert subscriptions_of(await kit.claim()) == sorted([orders, everything, everything])


async def test_paused_subscription_holds_its_deliveries(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    paused = await subscribe(client)
    await set_status(client, paused, "paused")

    accepted = await send(client, "k1", type="order.created", key="c-1")
    assert accepted["deliveries"] == 1
    second = await send(client, "k2", type="order.created", key="c-1")
    assert second["deliveries"] == 1
    assert len(await kit.deliveries_of(accepted["id"])) == 1
    assert await kit.claim() == []

    await set_status(client, paused, "active")
    (first,) = await kit.claim()
    assert (first.subscription_id, first.event_id) == (paused, accepted["id"])
    await kit.finish(first, "succeeded")
    assert [c.event_id for c in await kit.claim()] == [second["id"]]


async def test_disabled_subscription_gets_no_deliveries(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    """Disabled by PATCH: ingest creates none, and re-enabling does not catch up."""
    disabled = await subscribe(client)
    active = await subscribe(client, event_types=["audit.*"])
    await set_status(client, disabled, "disabled")

    accepted = await send(client, "k1", type="order.created", key="c-1")
    assert accepted["deliveries"] == 0
    assert await kit.deliveries_of(accepted["id"]) == []
    assert (await client.get(f"/v1/events/{accepted['id']}")).json()["deliveries"] == []
    audit = await send(client, "k0", type="audit.login")
    assert audit["deliveries"] == 1
    assert subscriptions_of(await kit.claim()) == [active]

    await set_status(client, disabled, "active")
    assert await kit.claim() == [], "re-enabling does not deliver what arrived while disabled"
    later = await send(client, "k2", type="order.created", key="c-1")
    assert later["deliveries"] == 1
    assert subscriptions_of(await kit.claim()) == [disabled]
