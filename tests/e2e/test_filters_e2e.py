"""A content filter end to end: the real ``eventrelay serve`` delivers to a
loopback receiver only the events that match, and a filter changed by
``PATCH`` applies to the next event."""

from __future__ import annotations

from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import ReceiverPool, wait_until

SETTLE_SECONDS = 15.0


async def test_only_matching_events_reach_the_receiver(
    relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start()
    event_type = unique_type("filter")
    sub = await relay.subscribe(
        receiver.url(),
        event_types=[event_type],
        filter={"data": {"total": {"$gte": 100}, "currency": {"$in": ["EUR", "USD"]}}},
    )
    # One key, so the line delivers in order: once the last event has arrived,
    # the one before it would have arrived first had it had a delivery.
    big = await relay.publish(event_type, {"total": 150, "currency": "EUR"}, key="k")
    small = await relay.publish(event_type, {"total": 50, "currency": "EUR"}, key="k")
    other = await relay.publish(event_type, {"total": 150, "currency": "GBP"}, key="k")
    last = await relay.publish(event_type, {"total": 100, "currency": "USD"}, key="k")
    assert [e["deliveries"] for e in (big, small, other, last)] == [1, 0, 0, 1]
    await wait_until(
        lambda: receiver.succeeded_ids() >= {big["id"], last["id"]},
        SETTLE_SECONDS,
        message="the matching events delivered",
    )
    assert [r.json["id"] for r in receiver.receipts] == [big["id"], last["id"]]
    assert (await relay.event(small["id"]))["deliveries"] == []

    await relay.patch(sub["id"], filter={"data": {"currency": "GBP"}})
    gbp = await relay.publish(event_type, {"total": 1, "currency": "GBP"}, key="k")
    await wait_until(
        lambda: gbp["id"] in receiver.succeeded_ids(), SETTLE_SECONDS, message="GBP delivered"
    )
    assert [r.json["id"] for r in receiver.receipts] == [big["id"], last["id"], gbp["id"]]
