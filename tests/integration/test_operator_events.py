"""Operator events on both databases (API-v2, Operator events): made in the
worker's cycle and in a disabling PATCH, in the same transaction as the change
they report, stored and fanned out like any event, never about themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select

from app.domain.circuit import CircuitChange
from app.domain.subscriptions import SubscriptionPatch
from app.services.subscriptions import SubscriptionService
from app.store import deliveries as delivery_store
from app.store import schema
from app.store import tenants as tenant_store
from app.store.subscriptions import CircuitUpdate, Subscription
from app.store.work import Claimed, ClaimRequest, Completion
from tests.integration.conftest import LEASE, DeliveryKit


async def operator_events(kit: DeliveryKit) -> list[dict[str, Any]]:
    """Every operator event stored, in order, with its data parsed."""
    e = schema.events
    async with kit.db.read() as conn:
        rows = await conn.execute(select(e).where(e.c.type.like("eventrelay.%")).order_by(e.c.seq))
        found = [dict(r._mapping) for r in rows]
    for row in found:
        row["data"] = orjson.loads(row["data"])
    return found


async def receivers(kit: DeliveryKit, event_id: str) -> list[str]:
    return [d["subscription_id"] for d in await kit.deliveries_of(event_id)]


def completion(
    claimed: Claimed, status: str, *, owner: str = "worker-a", code: int = 500
) -> Completion:
    now = datetime.now(UTC)
    return Completion(
        delivery=claimed,
        owner=owner,
        status=status,
        started_at=now,
        duration_ms=3,
        status_code=code,
        error=None,
        response_body="no",
        next_attempt_at=now + timedelta(minutes=1) if status == "pending" else None,
        finished_at=now,
        summary=f"schedule exhausted; last: HTTP {code}",
    )


async def write(
    kit: DeliveryKit, completions: list[Completion], circuit: list[CircuitUpdate] | None = None
) -> None:
    await delivery_store.complete_and_claim(kit.db, completions, circuit or [], None)


async def claim_for(kit: DeliveryKit, sub: Subscription, owner: str = "worker-a") -> list[Claimed]:
    now = datetime.now(UTC) + timedelta(seconds=1)
    others = [s for s in await _all_subscriptions(kit) if s != sub.id]
    request = ClaimRequest(owner, now, now + LEASE, 100, others)
    return [w.delivery for w in await delivery_store.complete_and_claim(kit.db, [], (), request)]


async def _all_subscriptions(kit: DeliveryKit) -> list[str]:
    s = schema.subscriptions
    async with kit.db.read() as conn:
        return [r[0] for r in await conn.execute(select(s.c.id))]


async def test_a_dead_letter_is_reported_to_the_subscriptions_that_name_operator_events(
    kit: DeliveryKit,
) -> None:
    failing = await kit.subscription(event_types=["order.*"])
    everything = await kit.subscription(event_types=["*"])
    ops = await kit.subscription(event_types=["eventrelay.*"])
    exact = await kit.subscription(event_types=["eventrelay.delivery.dead_lettered"])
    other_op = await kit.subscription(event_types=["eventrelay.subscription.*"])
    (event,) = await kit.events(("order.created", "customer-1"))
    (claimed,) = await claim_for(kit, failing)

    await write(kit, [completion(claimed, "dead", code=502)])

    (reported,) = await operator_events(kit)
    assert reported["type"] == "eventrelay.delivery.dead_lettered"
    assert reported["key"] == failing.id, "keyed by the subscription it reports on"
    assert reported["data"] == {
        "delivery_id": claimed.id,
        "subscription_id": failing.id,
        "event_id": event.id,
        "event_type": "order.created",
        "attempts": 1,
        "last_status_code": 502,
        "last_error": "schedule exhausted; last: HTTP 502",
    }
    assert sorted(await receivers(kit, reported["id"])) == sorted([ops.id, exact.id])
    assert everything.id not in await receivers(kit, reported["id"]), "* does not match it"
    assert other_op.id not in await receivers(kit, reported["id"])
    dead = await kit.delivery(claimed.id)
    assert (dead["status"], dead["attempts"]) == ("dead", 1)


async def test_retries_and_successes_report_nothing(kit: DeliveryKit) -> None:
    sub = await kit.subscription(event_types=["*", "eventrelay.*"])
    await kit.subscription(event_types=["eventrelay.*"])
    await kit.events(("a", None), ("b", None))
    first, second = await claim_for(kit, sub)
    await write(kit, [completion(first, "succeeded", code=200), completion(second, "pending")])
    assert await operator_events(kit) == []


async def test_a_completion_whose_lease_was_taken_over_reports_nothing(kit: DeliveryKit) -> None:
    sub = await kit.subscription(event_types=["order.*"])
    await kit.subscription(event_types=["eventrelay.*"])
    await kit.events(("order.created", None))
    (claimed,) = await claim_for(kit, sub)
    await write(kit, [completion(claimed, "dead", owner="worker-b")])  # not its lease
    assert await operator_events(kit) == []
    assert (await kit.delivery(claimed.id))["status"] == "in_flight"

    await write(kit, [completion(claimed, "dead")])
    await write(kit, [completion(claimed, "dead")])  # the same outcome again: already written
    assert len(await operator_events(kit)) == 1


async def test_the_delivery_of_an_operator_event_that_dead_letters_is_not_reported(
    kit: DeliveryKit,
) -> None:
    failing = await kit.subscription(event_types=["order.*"])
    ops = await kit.subscription(event_types=["eventrelay.*"])
    await kit.events(("order.created", None))
    (claimed,) = await claim_for(kit, failing)
    await write(kit, [completion(claimed, "dead")])
    (reported,) = await operator_events(kit)

    (operator_delivery,) = await claim_for(kit, ops)
    assert operator_delivery.event_id == reported["id"]
    assert operator_delivery.ordering_key == failing.id, "per-key order by subscription"
    await write(kit, [completion(operator_delivery, "dead")])

    assert [e["id"] for e in await operator_events(kit)] == [reported["id"]], "no loop"
    assert (await kit.delivery(operator_delivery.id))["status"] == "dead"


async def test_an_operator_event_is_not_delivered_to_the_subscription_it_reports_on(
    kit: DeliveryKit,
) -> None:
    both = await kit.subscription(event_types=["order.*", "eventrelay.*"])
    watcher = await kit.subscription(event_types=["eventrelay.*"])
    await kit.events(("order.created", None))
    (claimed,) = await claim_for(kit, both)
    update = CircuitUpdate(both.id, 20, datetime.now(UTC), None, None, CircuitChange(True, 20))
    await write(kit, [completion(claimed, "dead")], [update])

    dead_lettered, opened = await operator_events(kit)
    assert dead_lettered["type"] == "eventrelay.delivery.dead_lettered"
    assert opened["type"] == "eventrelay.subscription.circuit_opened"
    assert opened["data"] == {"subscription_id": both.id, "consecutive_failures": 20}
    for reported in (dead_lettered, opened):
        assert await receivers(kit, reported["id"]) == [watcher.id]


async def test_circuit_changes_and_disables_are_reported_once(kit: DeliveryKit) -> None:
    sub = await kit.subscription(event_types=["order.*"])
    ops = await kit.subscription(event_types=["eventrelay.subscription.*"])
    now = datetime.now(UTC)
    opened = CircuitUpdate(
        sub.id, 20, now, now + timedelta(seconds=30), None, CircuitChange(True, 20)
    )
    closed = CircuitUpdate(sub.id, 0, None, None, None, CircuitChange(False, 23))
    failing = CircuitUpdate(sub.id, 24, now, None, "failing")
    counted = CircuitUpdate(sub.id, 21, now, now + timedelta(seconds=60), None)
    await kit.events(*[("order.created", None) for _ in range(5)])
    claimed = await claim_for(kit, sub)
    for c, update in zip(claimed, (opened, counted, closed, failing, failing), strict=True):
        await write(kit, [completion(c, "pending")], [update])

    reported = [(e["type"], e["data"]) for e in await operator_events(kit)]
    assert reported == [
        (
            "eventrelay.subscription.circuit_opened",
            {"subscription_id": sub.id, "consecutive_failures": 20},
        ),
        (
            "eventrelay.subscription.circuit_closed",
            {"subscription_id": sub.id, "consecutive_failures": 23},
        ),
        ("eventrelay.subscription.disabled", {"subscription_id": sub.id, "reason": "failing"}),
    ]
    for event in await operator_events(kit):
        assert await receivers(kit, event["id"]) == [ops.id]
        assert event["key"] == sub.id
    s = schema.subscriptions
    async with kit.db.read() as conn:
        row = (await conn.execute(select(s).where(s.c.id == sub.id))).one()
    assert (row.status, row.disabled_reason) == ("disabled", "failing")


async def test_disabling_by_patch_is_reported_as_manual_once(kit: DeliveryKit) -> None:
    woken: list[bool] = []
    service = SubscriptionService(
        kit.db, allow_private_targets=True, wake_workers=lambda: woken.append(True)
    )
    sub = await kit.subscription()
    ops = await kit.subscription(event_types=["eventrelay.*"])

    await service.patch("default", sub.id, SubscriptionPatch(status="paused"))
    assert await operator_events(kit) == []
    await service.patch("default", sub.id, SubscriptionPatch(status="disabled"))
    await service.patch("default", sub.id, SubscriptionPatch(status="disabled"))  # already disabled
    await service.patch("default", sub.id, SubscriptionPatch(description="still disabled"))

    (reported,) = await operator_events(kit)
    assert (reported["type"], reported["key"]) == ("eventrelay.subscription.disabled", sub.id)
    assert reported["data"] == {"subscription_id": sub.id, "reason": "manual"}
    assert await receivers(kit, reported["id"]) == [ops.id]
    assert woken == [True], "the worker is told of the new delivery"

    await service.patch("default", sub.id, SubscriptionPatch(status="active"))
    await service.patch("default", sub.id, SubscriptionPatch(status="disabled"))
    assert len(await operator_events(kit)) == 2, "disabled again after re-enabling: reported"


async def test_with_no_listener_nothing_is_reported_and_a_later_one_hears_from_then_on(
    kit: DeliveryKit,
) -> None:
    sub = await kit.subscription(event_types=["order.*"])
    await kit.subscription(event_types=["*", "eventrelay"])  # names no reserved type
    await kit.events(("order.created", None), ("order.created", None))
    first, second = await claim_for(kit, sub)
    opened = CircuitUpdate(sub.id, 20, datetime.now(UTC), None, None, CircuitChange(True, 20))
    await write(kit, [completion(first, "dead")], [opened])
    assert await operator_events(kit) == [], "nobody listens: nothing written"
    assert (await kit.delivery(first.id))["status"] == "dead"

    later = await kit.subscription(event_types=["eventrelay.delivery.*"])
    await write(kit, [completion(second, "dead")])
    (reported,) = await operator_events(kit)
    assert reported["data"]["delivery_id"] == second.id
    assert await receivers(kit, reported["id"]) == [later.id]


async def test_a_disabled_listener_hears_nothing(kit: DeliveryKit) -> None:
    sub = await kit.subscription()
    ops = await kit.subscription(event_types=["eventrelay.*"])
    service = SubscriptionService(kit.db, allow_private_targets=True)
    await service.patch("default", ops.id, SubscriptionPatch(status="disabled"))
    (about_ops,) = await operator_events(kit)
    assert about_ops["key"] == ops.id
    assert await receivers(kit, about_ops["id"]) == [], "not sent to the one it is about"
    await service.patch("default", sub.id, SubscriptionPatch(status="disabled"))
    assert len(await operator_events(kit)) == 1, "the only listener is disabled"


async def test_replay_sends_stored_reports_only_to_patterns_that_name_them(
    kit: DeliveryKit,
) -> None:
    service = SubscriptionService(kit.db, allow_private_targets=True)
    sub = await kit.subscription(event_types=["order.*"])
    await kit.subscription(event_types=["eventrelay.*"])
    (event,) = await kit.events(("order.created", None))
    (claimed,) = await claim_for(kit, sub)
    await write(kit, [completion(claimed, "dead")])
    (reported,) = await operator_events(kit)

    catch_all = await kit.subscription(event_types=["*"])
    newcomer = await kit.subscription(event_types=["eventrelay.delivery.dead_lettered"])
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert await service.replay("default", catch_all.id, since, None) == 1, "the client event only"
    assert await service.replay("default", newcomer.id, since, None) == 1, "the report only"
    assert catch_all.id in await receivers(kit, event.id)
    assert newcomer.id in await receivers(kit, reported["id"])
    assert catch_all.id not in await receivers(kit, reported["id"])


async def test_no_report_about_a_subscription_deleted_meanwhile(kit: DeliveryKit) -> None:
    service = SubscriptionService(kit.db, allow_private_targets=True)
    sub = await kit.subscription(event_types=["order.*"])
    gone = await kit.subscription(event_types=["order.*"])
    await kit.subscription(event_types=["eventrelay.*"])
    await kit.events(("order.created", None))
    claimed = await claim_for(kit, sub)
    await service.delete("default", gone.id)  # its attempts were in flight; its circuit moved
    now = datetime.now(UTC)
    updates = [
        CircuitUpdate(gone.id, 20, now, None, None, CircuitChange(True, 20)),
        CircuitUpdate(gone.id, 21, now, None, "gone"),
    ]
    await write(kit, [completion(claimed[0], "pending")], updates)
    assert await operator_events(kit) == []


async def test_a_report_belongs_to_its_subscriptions_tenant(kit: DeliveryKit) -> None:
    now = datetime.now(UTC)
    for tenant_id in ("acme", "globex"):
        await tenant_store.create(
            kit.db,
            {
                "id": tenant_id,
                "name": tenant_id,
                "metadata": {},
                "status": "active",
                "created_at": now,
                "updated_at": now,
            },
        )
    failing = await kit.subscription(tenant_id="acme", event_types=["order.*"])
    acme_ops = await kit.subscription(tenant_id="acme", event_types=["eventrelay.*"])
    await kit.subscription(tenant_id="globex", event_types=["eventrelay.*"])
    await kit.subscription(event_types=["eventrelay.*"])  # the default tenant's
    await kit.events(("order.created", None), tenant_id="acme")
    (claimed,) = await claim_for(kit, failing)
    await write(kit, [completion(claimed, "dead")])

    (reported,) = await operator_events(kit)
    assert reported["tenant_id"] == "acme"
    assert await receivers(kit, reported["id"]) == [acme_ops.id], "only its own tenant's"

    service = SubscriptionService(kit.db, allow_private_targets=True)
    lonely = await kit.subscription(tenant_id="globex", event_types=["order.*"])
    await service.patch("globex", lonely.id, SubscriptionPatch(status="disabled"))
    globex_report = (await operator_events(kit))[-1]
    assert (globex_report["tenant_id"], globex_report["key"]) == ("globex", lonely.id)
