"""Operator events end to end: the real server process, real receivers.

A subscription to ``eventrelay.*`` is told, signed like any delivery, when
another subscription's receiver keeps failing; a ``*`` subscription is not.
And a server killed with SIGKILL while it dead-letters loses no report and
invents none: after the restart every dead letter has exactly one
``eventrelay.delivery.dead_lettered`` event, and every such event one dead letter.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import ServerFactory, ServerProcess
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import Receipt, ReceiverPool, pause, reply, wait_until

DEAD_LETTERED = "eventrelay.delivery.dead_lettered"
SETTLE = 45.0
# Short leases: a killed server's claims come back within seconds (PostgreSQL).
# The circuit kept out of the way: every attempt here fails.
FAST = {
    "EVENTRELAY_LEASE_SECONDS": "1",
    "EVENTRELAY_DELIVERY_TIMEOUT_MS": "2000",
    "EVENTRELAY_CIRCUIT_FAILURE_THRESHOLD": "100000",
}


async def always_failing(_: Receipt) -> web.StreamResponse:
    return reply(503, body="down for maintenance")


async def listed(relay: Relay, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list endpoint, following cursors."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = params | {"limit": 500} | ({"cursor": cursor} if cursor else {})
        response = await relay.http.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_an_operator_subscription_is_told_of_a_dead_letter_signed_like_any_delivery(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    failing = await receivers.start(always_failing)
    pager = await receivers.start()
    catch_all = await receivers.start()
    server: ServerProcess = await asyncio.to_thread(server_factory, database_url)
    async with Relay(server) as relay:
        event_type = unique_type("ops")
        broken = await relay.subscribe(
            failing.url(), event_types=[event_type], retry_schedule=[0.05, 0.05]
        )
        ops = await relay.subscribe(
            pager.url(), event_types=["eventrelay.*"], headers={"X-Pager": "on-call"}
        )
        await relay.subscribe(catch_all.url(), event_types=["*"])
        accepted = await relay.publish(event_type, {"total": 42}, key="customer-1")

        await wait_until(lambda: pager.receipts, SETTLE, message="the pager told")
        (told,) = pager.receipts
        body = Webhook(ops["secret"]).verify(told.body, told.headers)
        assert body["type"] == DEAD_LETTERED
        assert body["key"] == broken["id"]
        assert told.headers["webhook-id"] == body["id"]
        assert told.headers["x-pager"] == "on-call"
        deliveries = (await relay.event(accepted["id"]))["deliveries"]
        (dead,) = [d for d in deliveries if d["subscription_id"] == broken["id"]]
        assert dead["status"] == "dead"
        assert body["data"] == {
            "delivery_id": dead["id"],
            "subscription_id": broken["id"],
            "event_id": accepted["id"],
            "event_type": event_type,
            "attempts": 3,
            "last_status_code": 503,
            "last_error": dead_item_error(await relay.http.get(f"/v1/dlq/{dead['id']}")),
        }
        assert len(failing.receipts) == 3
        # The ordinary pipeline: stored, listed and delivered like any event.
        reported = await relay.event(body["id"])
        assert [(d["subscription_id"], d["status"]) for d in reported["deliveries"]] == [
            (ops["id"], "succeeded")
        ]
    assert [r.json["type"] for r in catch_all.receipts] == [event_type], "* is not told"


def dead_item_error(response: Any) -> str:
    assert response.status_code == 200, response.text
    error: str = response.json()["last_error"]
    assert "503" in error
    return error


async def test_a_server_killed_while_dead_lettering_reports_each_dead_letter_exactly_once(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    async def slowly_failing(_: Receipt) -> web.StreamResponse:
        await pause(0.05, receivers.closing)
        return reply(500)

    failing = await receivers.start(slowly_failing)
    pager = await receivers.start()
    server: ServerProcess = await asyncio.to_thread(server_factory, database_url, env=FAST)
    count = 300  # 8 at a time, 50 ms each: about two seconds of dead letters
    async with Relay(server) as relay:
        event_type = unique_type("kill")
        broken = await relay.subscribe(
            failing.url(),
            event_types=[event_type],
            retry_schedule=[],
            ordering="none",
            max_in_flight=8,
        )
        ops = await relay.subscribe(pager.url(), event_types=[DEAD_LETTERED])
        batch = [
            {"idempotency_key": f"k{n}", "type": event_type, "data": {"n": n}} for n in range(count)
        ]
        for start in range(0, count, 100):
            answer = await relay.http.post(
                "/v1/events/batch", json={"events": batch[start : start + 100]}
            )
            assert answer.status_code == 200, answer.text
        await wait_until(
            lambda: len(pager.receipts) >= 10, SETTLE, message="dead letters being reported"
        )
    server.kill()
    assert len({r.webhook_id for r in pager.receipts}) < count, "all done before the kill"

    await asyncio.to_thread(server.start)
    async with Relay(server) as relay:

        async def all_dead() -> bool:
            return len(await listed(relay, "/v1/dlq", subscription_id=broken["id"])) == count

        await wait_until(all_dead, SETTLE, interval=0.2, message="every delivery dead")
        dead = {d["id"] for d in await listed(relay, "/v1/dlq", subscription_id=broken["id"])}
        reports = await listed(relay, "/v1/events", type=DEAD_LETTERED)
        per_delivery = Counter(r["data"]["delivery_id"] for r in reports)
        assert set(per_delivery) == dead, "a report for every dead letter, none for others"
        assert set(per_delivery.values()) == {1}, "exactly one report each"
        assert {r["key"] for r in reports} == {broken["id"]}

        await wait_until(
            lambda: (
                {r.webhook_id for r in pager.receipts if r.succeeded} >= {r["id"] for r in reports}
            ),
            SETTLE,
            message="every report delivered to the pager",
        )
        for receipt in pager.receipts[:3]:
            Webhook(ops["secret"]).verify(receipt.body, receipt.headers)
