"""What a subscriber receives, and what each kind of answer leads to.

The real ``eventrelay serve`` (embedded worker) delivers to aiohttp receivers
on loopback in the test process. Each test has its own event type and
subscription, so the module shares one server per backend; the paused-
subscription test counts ``/v1/stats`` exactly and gets a server of its own.
"""

from __future__ import annotations

import email.utils
import time
from datetime import datetime

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app import __version__
from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import (
    Receipt,
    ReceiverPool,
    first_successes_by_key,
    reply,
    scripted,
    slow,
    wait_until,
)

SETTLE_SECONDS = 15.0
FAST = [0.05, 0.05]  # three attempts in all
BODY_FIELDS = {"id", "type", "timestamp", "key", "schema_version", "data"}


async def settled(relay: Relay, event_id: str, *statuses: str) -> dict[str, object]:
    """Wait until the event's delivery reaches one of ``statuses``; return it."""
    found: dict[str, object] = await wait_until(
        lambda: relay.delivery_in(event_id, *statuses),
        SETTLE_SECONDS,
        interval=0.05,
        message=f"the delivery of {event_id} to become {'/'.join(statuses)}",
    )
    return found


def signatures(receipt: Receipt) -> list[str]:
    return receipt.headers["webhook-signature"].split(" ")


def verifies(secret: str, receipt: Receipt, signature: str | None = None) -> bool:
    headers = dict(receipt.headers)
    if signature is not None:
        headers["webhook-signature"] = signature
    try:
        Webhook(secret).verify(receipt.body, headers)
    except WebhookVerificationError:
        return False
    return True


# -- 1. the request itself --------------------------------------------------------


async def test_delivery_is_signed_and_carries_the_contract_body_and_headers(
    relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start()
    event_type = unique_type("happy")
    sub = await relay.subscribe(
        receiver.url("/in/hooks"),
        event_types=[event_type],
        headers={"X-Team": "billing", "X-Trace-Tag": "e2e"},
    )
    keyed_data = {"total": 42, "lines": [{"sku": "é-1", "qty": 2.5}], "none": None}
    keyed = await relay.publish(event_type, keyed_data, key="customer-42")
    keyless = await relay.publish(event_type, ["two", 2])
    await wait_until(
        lambda: receiver.succeeded_ids() >= {keyed["id"], keyless["id"]},
        SETTLE_SECONDS,
        message="both events delivered",
    )

    for accepted, key, data in ((keyed, "customer-42", keyed_data), (keyless, None, ["two", 2])):
        (receipt,) = receiver.for_event(accepted["id"])
        assert receipt.path == "/in/hooks"
        body = receipt.json
        assert set(body) == BODY_FIELDS, body
        assert body["id"] == accepted["id"]
        assert body["type"] == event_type
        assert body["key"] == key
        assert body["schema_version"] is None
        assert body["data"] == data
        assert datetime.fromisoformat(body["timestamp"]) == datetime.fromisoformat(
            accepted["received_at"]
        )
        headers = receipt.headers
        assert headers["content-type"] == "application/json"
        assert headers["webhook-id"] == accepted["id"]
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60, headers
        assert headers["user-agent"] == f"eventrelay/{__version__}"
        assert headers["x-team"] == "billing"
        assert headers["x-trace-tag"] == "e2e"
        assert len(signatures(receipt)) == 1, headers["webhook-signature"]
        assert Webhook(sub["secret"]).verify(receipt.body, headers) == body
        assert not verifies("whsec_" + "A" * 43 + "=", receipt)

    delivery = await settled(relay, keyed["id"], "succeeded", "dead")
    assert delivery["subscription_id"] == sub["id"]
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "succeeded",
        1,
        200,
    )


async def test_after_rotation_both_secrets_verify(relay: Relay, receivers: ReceiverPool) -> None:
    receiver = await receivers.start()
    event_type = unique_type("rotate")
    sub = await relay.subscribe(receiver.url(), event_types=[event_type])
    old = sub["secret"]
    before = await relay.publish(event_type, {"n": 1})
    await wait_until(lambda: before["id"] in receiver.succeeded_ids(), SETTLE_SECONDS)

    new = await relay.rotate_secret(sub["id"])
    assert new != old
    assert new.startswith("whsec_")
    secret = await relay.http.get(f"/v1/subscriptions/{sub['id']}/secret")
    assert secret.json() == {"secret": new}

    after = await relay.publish(event_type, {"n": 2})
    await wait_until(lambda: after["id"] in receiver.succeeded_ids(), SETTLE_SECONDS)
    (receipt,) = receiver.for_event(after["id"])
    entries = signatures(receipt)
    assert len(entries) == 2, (
        "the first delivery after rotate-secret must be signed with the new and the "
        f"previous secret; got {receipt.headers['webhook-signature']!r} "
        f"(verifies with the old secret: {verifies(old, receipt)}, "
        f"with the new: {verifies(new, receipt)})"
    )
    assert verifies(new, receipt)
    assert verifies(old, receipt)
    # One entry per secret, not the same signature twice.
    assert sorted(verifies(new, receipt, e) for e in entries) == [False, True]
    assert sorted(verifies(old, receipt, e) for e in entries) == [False, True]


# -- 2. outcomes --------------------------------------------------------------------


async def test_500_then_200_is_retried_then_succeeds(relay: Relay, receivers: ReceiverPool) -> None:
    receiver = await receivers.start(scripted(500))
    event_type = unique_type("retry")
    await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=[0.05] * 3)
    accepted = await relay.publish(event_type, {"n": 1}, key="k")

    delivery = await settled(relay, accepted["id"], "succeeded", "dead")
    assert delivery["status"] == "succeeded", delivery
    assert (delivery["attempts"], delivery["last_status_code"]) == (2, 200), delivery
    first, second = receiver.for_event(accepted["id"])
    assert (first.status, second.status) == (500, 200)
    assert first.body == second.body
    assert second.at - first.at >= 0.05 * 0.8


async def test_always_500_is_dead_after_the_schedule(relay: Relay, receivers: ReceiverPool) -> None:
    receiver = await receivers.start(scripted(then=500))
    event_type = unique_type("dead")
    await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=FAST)
    accepted = await relay.publish(event_type, {"n": 1})

    delivery = await settled(relay, accepted["id"], "dead")
    assert (delivery["attempts"], delivery["last_status_code"]) == (3, 500), delivery
    requests = receiver.for_event(accepted["id"])
    assert [r.status for r in requests] == [500, 500, 500]
    gaps = [b.at - a.at for a, b in zip(requests, requests[1:], strict=False)]
    assert all(gap >= 0.05 * 0.8 for gap in gaps), gaps
    attempts = await relay.attempts(accepted["id"])
    assert [a["attempt"] for a in attempts] == [1, 2, 3], attempts
    assert {a["status_code"] for a in attempts} == {500}


async def test_410_dead_letters_at_once_and_disables_the_subscription(
    relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start(scripted(then=410))
    event_type = unique_type("gone")
    sub = await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=FAST)
    accepted = await relay.publish(event_type, {"n": 1})

    delivery = await settled(relay, accepted["id"], "dead", "succeeded")
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "dead",
        1,
        410,
    ), delivery
    assert len(receiver.for_event(accepted["id"])) == 1
    found = await relay.subscription(sub["id"])
    assert (found["status"], found["disabled_reason"]) == ("disabled", "gone"), found
    # A disabled subscription gets no deliveries for new events.
    later = await relay.publish(event_type, {"n": 2})
    assert later["deliveries"] == 0, later


def _http_date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "at_least"),
    [(429, "1", 1.0), (503, "1", 1.0), (429, "date+2", 1.0)],
    ids=["429-seconds", "503-seconds", "429-http-date"],
)
async def test_retry_after_overrides_a_shorter_schedule(
    relay: Relay, receivers: ReceiverPool, status: int, retry_after: str, at_least: float
) -> None:
    answered: list[str] = []

    async def behave(receipt: Receipt) -> web.StreamResponse:
        if answered:
            return reply(200)
        # An HTTP date has whole seconds: 2 s ahead means at least 1 s from now.
        value = _http_date_in(2) if retry_after == "date+2" else retry_after
        answered.append(value)
        return reply(status, headers={"Retry-After": value})

    receiver = await receivers.start(behave)
    event_type = unique_type("throttle")
    await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=FAST)
    accepted = await relay.publish(event_type, {"n": 1})

    delivery = await settled(relay, accepted["id"], "succeeded", "dead")
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2), delivery
    first, second = receiver.for_event(accepted["id"])
    assert first.finished_at is not None
    waited = second.at - first.finished_at
    # 50 ms of clock granularity between the worker's wall clock and ours.
    assert waited >= at_least - 0.05, (waited, answered)


@pytest.mark.parametrize("status", [302, 307])
async def test_redirects_are_not_followed_but_retried(
    relay: Relay, receivers: ReceiverPool, status: int
) -> None:
    elsewhere = await receivers.start()

    async def redirect(_: Receipt) -> web.StreamResponse:
        return reply(status, headers={"Location": elsewhere.url("/moved")})

    receiver = await receivers.start(redirect)
    event_type = unique_type("redirect")
    await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=FAST)
    accepted = await relay.publish(event_type, {"n": 1})

    delivery = await settled(relay, accepted["id"], "dead", "succeeded")
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "dead",
        3,
        status,
    ), delivery
    assert len(receiver.for_event(accepted["id"])) == 3
    assert elsewhere.receipts == [], "the redirect was followed"


async def test_a_timeout_is_retried_then_dead_with_an_error(
    relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start(slow(1.5, cut_short=receivers.closing))
    event_type = unique_type("timeout")
    await relay.subscribe(
        receiver.url(), event_types=[event_type], retry_schedule=[0.05], timeout_ms=200
    )
    accepted = await relay.publish(event_type, {"n": 1})

    delivery = await settled(relay, accepted["id"], "dead", "succeeded")
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "dead",
        2,
        None,
    ), delivery
    assert len(receiver.for_event(accepted["id"])) == 2
    attempts = await relay.attempts(accepted["id"])
    assert len(attempts) == 2, attempts
    for attempt in attempts:
        assert attempt["status_code"] is None, attempt
        assert attempt["error"], attempt
        # Cut short near 200 ms; the receiver would have answered 200 at 1.5 s.
        assert 150 <= attempt["duration_ms"] < 1500, attempt


async def test_connection_refused_is_retried_then_dead(relay: Relay) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    event_type = unique_type("refused")
    await relay.subscribe(closed, event_types=[event_type], retry_schedule=FAST)
    accepted = await relay.publish(event_type, {"n": 1})

    delivery = await settled(relay, accepted["id"], "dead", "succeeded")
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "dead",
        3,
        None,
    ), delivery
    attempts = await relay.attempts(accepted["id"])
    assert [a["attempt"] for a in attempts] == [1, 2, 3], attempts
    assert all(a["status_code"] is None and a["error"] for a in attempts), attempts


# -- 5. paused ------------------------------------------------------------------------


async def test_a_paused_subscription_holds_deliveries_until_resumed(
    database_url: str, server: ServerProcess, receivers: ReceiverPool
) -> None:
    # database_url first: pytest then stops the server before it drops the database.
    held = await receivers.start()
    control = await receivers.start()
    count = 12
    async with Relay(server) as relay:
        event_type = unique_type("pause")
        paused = await relay.subscribe(held.url(), event_types=[event_type])
        assert (await relay.patch(paused["id"], status="paused"))["status"] == "paused"
        await relay.subscribe(control.url(), event_types=[event_type])
        ids = []
        for seq in range(count):
            key = f"k{seq % 2}"
            accepted = await relay.publish(event_type, {"key": key, "seq": seq}, key=key)
            assert accepted["deliveries"] == 2, accepted
            ids.append(accepted["id"])

        # Once the active subscription's deliveries are all recorded, the worker has
        # been past every event: the paused subscription's must still be waiting.
        await wait_until(lambda: control.succeeded_ids() >= set(ids), SETTLE_SECONDS)
        stats = await wait_until(
            lambda: _stats_if_settled(relay, count), SETTLE_SECONDS, message="control recorded"
        )
        assert stats["deliveries"]["pending"] == count, stats
        assert stats["deliveries"]["in_flight"] == 0, stats
        assert held.receipts == []
        for event_id in ids:
            on_paused = [
                d
                for d in (await relay.event(event_id))["deliveries"]
                if d["subscription_id"] == paused["id"]
            ]
            assert [(d["status"], d["attempts"]) for d in on_paused] == [("pending", 0)]

        assert (await relay.patch(paused["id"], status="active"))["status"] == "active"
        await wait_until(lambda: held.succeeded_ids() >= set(ids), SETTLE_SECONDS)
        stats = await wait_until(
            lambda: _stats_if_settled(relay, 2 * count), SETTLE_SECONDS, message="all succeeded"
        )
        assert stats["deliveries"]["pending"] == 0, stats
    order = first_successes_by_key(held.receipts)
    assert order == {"k0": list(range(0, count, 2)), "k1": list(range(1, count, 2))}


async def _stats_if_settled(relay: Relay, succeeded: int) -> dict[str, object] | None:
    stats = await relay.stats()
    return stats if stats["deliveries"]["succeeded"] == succeeded else None
