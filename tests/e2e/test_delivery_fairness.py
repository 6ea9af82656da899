"""A slow or failing subscriber delays only itself.

The real ``eventrelay serve`` (embedded worker) with few slots
(``EVENTRELAY_WORKER_CONCURRENCY``), scaled down from the measured case in the
same proportions: one subscription with ``max_in_flight`` far above the
worker's slots and a backlog of about twelve rounds of them on a receiver
that answers slowly; or ten subscriptions whose receivers never answer within
their timeout (once they are failing) and whose ``max_in_flight`` add up to a
quarter more than the slots. Either way, another subscription's new event must arrive within its
idle latency plus one worker cycle.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.e2e.conftest import ServerFactory, ServerProcess
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import Receiver, ReceiverPool, scripted, slow, wait_until

CONCURRENCY = 16  # the worker's slots (256 by default)
BUSY_ANSWER_SECONDS = 0.5  # the busy receiver's answer time
BUSY_BACKLOG = 12 * CONCURRENCY  # rounds of every slot, as 3,000 deliveries were for 256
HANGING = 10  # subscriptions whose receivers never answer in time
HANGING_MAX_IN_FLIGHT = CONCURRENCY * 5 // 4 // HANGING  # 10 × 32 = 320 for 256 slots
HANGING_BACKLOG = 4 * HANGING_MAX_IN_FLIGHT  # each, so they always have more due
TIMEOUT_MS = 4000  # the hanging subscriptions' per-attempt timeout
ONE_CYCLE = 1.0  # generous: a worker cycle takes milliseconds
SAMPLES = 3
STALL_SECONDS = 30.0  # how long to wait before calling the event lost


@pytest.fixture
def fair_server(database_url: str, server_factory: ServerFactory) -> ServerProcess:
    return server_factory(
        database_url,
        env={
            "EVENTRELAY_WORKER_CONCURRENCY": str(CONCURRENCY),
            "EVENTRELAY_SHUTDOWN_GRACE_SECONDS": "1",
        },
    )


async def _latency(relay: Relay, receiver: Receiver, event_type: str) -> float:
    """Seconds from publishing one event until ``receiver`` has it."""
    started = time.monotonic()
    accepted = await relay.publish(event_type, {"probe": uuid.uuid4().hex})
    (receipt,) = await wait_until(
        lambda: receiver.for_event(accepted["id"]),
        STALL_SECONDS,
        interval=0.005,
        message=f"the other subscription's event {accepted['id']} to arrive",
    )
    return float(receipt.at - started)


async def _idle_latency(relay: Relay, receiver: Receiver, event_type: str) -> float:
    return max([await _latency(relay, receiver, event_type) for _ in range(SAMPLES)])


async def _publish_many(relay: Relay, event_type: str, count: int) -> None:
    for start in range(0, count, 500):
        items = [
            {"idempotency_key": uuid.uuid4().hex, "type": event_type, "data": {"n": n}}
            for n in range(start, min(count, start + 500))
        ]
        response = await relay.http.post("/v1/events/batch", json={"events": items})
        assert response.status_code == 200, response.text[:500]


async def test_a_busy_subscription_does_not_delay_another(
    fair_server: ServerProcess, receivers: ReceiverPool
) -> None:
    async with Relay(fair_server) as relay:
        other = await receivers.start()
        other_type = unique_type("other")
        await relay.subscribe(other.url(), event_types=[other_type])
        idle = await _idle_latency(relay, other, other_type)

        busy = await receivers.start(slow(BUSY_ANSWER_SECONDS, cut_short=receivers.closing))
        busy_type = unique_type("busy")
        await relay.subscribe(
            busy.url(), event_types=[busy_type], ordering="none", max_in_flight=1000
        )
        await _publish_many(relay, busy_type, BUSY_BACKLOG)
        await wait_until(
            lambda: (
                len(busy.in_progress()) >= CONCURRENCY // 2 and len(busy.receipts) > CONCURRENCY
            ),
            STALL_SECONDS,
            message="the busy subscription to fill the worker's slots",
        )

        loaded = await _latency(relay, other, other_type)

        assert loaded <= idle + ONE_CYCLE, (
            f"the other subscription's event took {loaded:.2f} s with the busy one "
            f"loaded, {idle:.3f} s idle"
        )
        assert len(busy.in_progress()) > 0, "the busy subscription's backlog was still being sent"


async def test_subscriptions_that_time_out_do_not_delay_another(
    fair_server: ServerProcess, receivers: ReceiverPool
) -> None:
    async with Relay(fair_server) as relay:
        other = await receivers.start()
        other_type = unique_type("other")
        await relay.subscribe(other.url(), event_types=[other_type])
        idle = await _idle_latency(relay, other, other_type)

        hanging: list[Receiver] = []
        for _ in range(HANGING):
            receiver = await receivers.start(slow(60.0, cut_short=receivers.closing))
            hanging_type = unique_type("hangs")
            await relay.subscribe(
                receiver.url(),
                event_types=[hanging_type],
                ordering="none",
                max_in_flight=HANGING_MAX_IN_FLIGHT,
                timeout_ms=TIMEOUT_MS,
                retry_schedule=[60],
            )
            await _publish_many(relay, hanging_type, HANGING_BACKLOG)
            hanging.append(receiver)
        # Their second round of requests: every one has failed at least once.
        await wait_until(
            lambda: sum(len(r.receipts) for r in hanging) >= 2 * CONCURRENCY - 1,
            STALL_SECONDS,
            message="the hanging subscriptions to time out and fill the slots again",
        )

        loaded = await _latency(relay, other, other_type)

        assert loaded <= idle + ONE_CYCLE, (
            f"the other subscription's event took {loaded:.2f} s with {HANGING} "
            f"subscriptions timing out, {idle:.3f} s idle"
        )


TENANT_A_SUBSCRIPTIONS = 8  # tenant A's busy subscriptions; tenant B has one


async def _tenant_latency(relay: Relay, receiver: Receiver, tenant: str, event_type: str) -> float:
    started = time.monotonic()
    response = await relay.http.post(
        "/v1/events",
        json={"type": event_type, "data": {"probe": uuid.uuid4().hex}},
        headers={"Idempotency-Key": uuid.uuid4().hex, "Eventrelay-Tenant": tenant},
    )
    assert response.status_code == 202, response.text
    event_id = response.json()["id"]
    (receipt,) = await wait_until(
        lambda: receiver.for_event(event_id),
        STALL_SECONDS,
        interval=0.005,
        message=f"tenant {tenant}'s event {event_id} to arrive",
    )
    return float(receipt.at - started)


async def _tenants_a_and_b(relay: Relay, receivers: ReceiverPool) -> tuple[Receiver, str]:
    """Tenants ``a`` and ``b``; ``b``'s one subscription, on a receiver that
    answers at once, and the event type it takes."""
    for tenant in ("a", "b"):
        created = await relay.http.post("/v1/tenants", json={"id": tenant, "name": tenant})
        assert created.status_code == 201, created.text
    quiet = await receivers.start()
    quiet_type = unique_type("quiet")
    made = await relay.http.post(
        "/v1/subscriptions",
        json={"url": quiet.url(), "event_types": [quiet_type]},
        headers={"Eventrelay-Tenant": "b"},
    )
    assert made.status_code == 201, made.text
    return quiet, quiet_type


async def _busy_subscriptions(relay: Relay, url: str, event_type: str, count: int) -> list[str]:
    """``count`` subscriptions of tenant ``a`` far above the worker's slots; their IDs."""
    made = []
    for _ in range(count):
        response = await relay.http.post(
            "/v1/subscriptions",
            json={
                "url": url,
                "event_types": [event_type],
                "ordering": "none",
                "max_in_flight": 1000,
            },
            headers={"Eventrelay-Tenant": "a"},
        )
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
    return made


async def test_a_tenant_with_many_busy_subscriptions_does_not_delay_another_tenant(
    fair_server: ServerProcess, receivers: ReceiverPool
) -> None:
    """API-v2: delivery capacity is shared fairly between tenants. Tenant A's
    subscriptions each have a backlog on a slow receiver; tenant B's one
    subscription's new event arrives within its idle latency plus one cycle."""
    async with Relay(fair_server) as relay:
        quiet, quiet_type = await _tenants_a_and_b(relay, receivers)
        idle = max([await _tenant_latency(relay, quiet, "b", quiet_type) for _ in range(SAMPLES)])

        busy = await receivers.start(slow(BUSY_ANSWER_SECONDS, cut_short=receivers.closing))
        busy_type = unique_type("busy")
        await _busy_subscriptions(relay, busy.url(), busy_type, TENANT_A_SUBSCRIPTIONS)
        saved = relay.http.headers.copy()
        relay.http.headers["Eventrelay-Tenant"] = "a"
        try:
            await _publish_many(relay, busy_type, BUSY_BACKLOG // 2)
        finally:
            relay.http.headers = saved
        await wait_until(
            lambda: len(busy.in_progress()) >= CONCURRENCY // 2,
            STALL_SECONDS,
            message="tenant A to fill the worker's slots",
        )

        loaded = [await _tenant_latency(relay, quiet, "b", quiet_type) for _ in range(SAMPLES)]

        assert max(loaded) <= idle + ONE_CYCLE, (
            f"tenant B's events took {loaded} s with tenant A loaded, {idle:.3f} s idle"
        )
        assert len(busy.in_progress()) > 0, "tenant A's backlog was still being sent"


TENANT_BACKLOG = 1000  # tenant A's events, all pending at once, ×3 subscriptions
TENANT_A_BACKLOGGED = 3  # ~190 rounds of every slot in all
TENANT_BURST = 100  # tenant B's burst, in one batch


async def _publish_as(relay: Relay, tenant: str, event_type: str, count: int) -> list[str]:
    """``count`` events for ``tenant`` in batches of 500; their IDs."""
    ids: list[str] = []
    for start in range(0, count, 500):
        items = [
            {"idempotency_key": uuid.uuid4().hex, "type": event_type, "data": {"n": n}}
            for n in range(start, min(count, start + 500))
        ]
        response = await relay.http.post(
            "/v1/events/batch", json={"events": items}, headers={"Eventrelay-Tenant": tenant}
        )
        assert response.status_code == 200, response.text[:500]
        ids += [item["id"] for item in response.json()["items"]]
    return ids


async def _set_status(relay: Relay, tenant: str, subscriptions: list[str], status: str) -> None:
    for subscription_id in subscriptions:
        changed = await relay.http.patch(
            f"/v1/subscriptions/{subscription_id}",
            json={"status": status},
            headers={"Eventrelay-Tenant": tenant},
        )
        assert changed.status_code == 200, changed.text


async def _burst_latency(relay: Relay, receiver: Receiver, tenant: str, event_type: str) -> float:
    """Seconds from publishing TENANT_BURST events in one batch until the last arrives."""
    started = time.monotonic()
    ids = await _publish_as(relay, tenant, event_type, TENANT_BURST)
    await wait_until(
        lambda: all(receiver.for_event(i) for i in ids),
        STALL_SECONDS,
        interval=0.005,
        message=f"tenant {tenant}'s burst to arrive",
    )
    return max(receiver.for_event(i)[0].at for i in ids) - started


async def _crowd(
    relay: Relay, receivers: ReceiverPool, answer_seconds: float, fill: int
) -> Receiver:
    """Tenant A's backlogged subscriptions on a receiver answering in
    ``answer_seconds``, their backlog all pending at once (paused while it is
    ingested), once ``fill`` of A's attempts are in progress; the receiver."""
    busy = await receivers.start(slow(answer_seconds, cut_short=receivers.closing))
    busy_type = unique_type("busy")
    backlogged = await _busy_subscriptions(relay, busy.url(), busy_type, TENANT_A_BACKLOGGED)
    await _set_status(relay, "a", backlogged, "paused")
    await _publish_as(relay, "a", busy_type, TENANT_BACKLOG)
    await _set_status(relay, "a", backlogged, "active")
    await wait_until(
        lambda: len(busy.in_progress()) >= fill,
        STALL_SECONDS,
        message="tenant A to fill the worker's slots",
    )
    return busy


async def test_a_tenants_long_backlog_does_not_delay_another_tenants_new_events(
    fair_server: ServerProcess, receivers: ReceiverPool
) -> None:
    """The fairness benchmark's case, scaled down: tenant A has a backlog many
    times what the worker claims ahead, all pending at once, on a slow
    receiver; tenant B's single events and its burst arrive within their idle
    latency plus one cycle, not behind A's backlog (which takes minutes)."""
    async with Relay(fair_server) as relay:
        quiet, quiet_type = await _tenants_a_and_b(relay, receivers)
        idle = max([await _tenant_latency(relay, quiet, "b", quiet_type) for _ in range(SAMPLES)])
        idle_burst = await _burst_latency(relay, quiet, "b", quiet_type)

        busy = await _crowd(relay, receivers, BUSY_ANSWER_SECONDS, CONCURRENCY // 2)

        loaded = [await _tenant_latency(relay, quiet, "b", quiet_type) for _ in range(SAMPLES)]
        loaded_burst = await _burst_latency(relay, quiet, "b", quiet_type)

        assert max(loaded) <= idle + ONE_CYCLE, (
            f"tenant B's events took {loaded} s behind tenant A's backlog, {idle:.3f} s idle"
        )
        assert loaded_burst <= idle_burst + ONE_CYCLE, (
            f"tenant B's burst took {loaded_burst:.2f} s behind tenant A's backlog, "
            f"{idle_burst:.2f} s idle"
        )
        assert len(busy.receipts) < TENANT_BACKLOG, "tenant A's backlog was still long"


RARE_POLL_SECONDS = 10.0  # a missed new event would wait this long for a poll
ROUNDS = 6  # rounds of tenant B's events; each round's last one is the likeliest missed
ROUND = 8  # events a round, published one after another without waiting
QUICK_ANSWER_SECONDS = 0.02  # tenant A's receiver here
ROUND_GAP = 0.003  # seconds between them: commits while the last one's claim is under way


async def test_another_tenants_events_do_not_wait_for_a_poll_while_one_crowds(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    """Tenant B's new events, published while earlier ones are still being
    claimed, each arrive within B's idle latency plus one cycle while tenant A's
    backlog fills the worker, with polling too rare to rescue one: every claim
    (not only a probe after a wake-up) takes the other tenants' newest
    deliveries, and a wake-up that comes while a probe claim is at the database
    leaves the next claim probing."""
    fair = server_factory(
        database_url,
        env={
            "EVENTRELAY_WORKER_CONCURRENCY": str(CONCURRENCY),
            "EVENTRELAY_WORKER_POLL_SECONDS": str(RARE_POLL_SECONDS),
            "EVENTRELAY_SHUTDOWN_GRACE_SECONDS": "1",
        },
    )
    async with Relay(fair) as relay:
        quiet, quiet_type = await _tenants_a_and_b(relay, receivers)
        idle = max([await _tenant_latency(relay, quiet, "b", quiet_type) for _ in range(SAMPLES)])

        # Answering quickly, A's lines take slots as fast as claims bring them:
        # A is below its limits, and every claim walks its backlog too.
        busy = await _crowd(relay, receivers, QUICK_ANSWER_SECONDS, CONCURRENCY // 2)

        published: dict[str, float] = {}
        for _ in range(ROUNDS):
            round_ids = []
            for _ in range(ROUND):
                started = time.monotonic()
                response = await relay.http.post(
                    "/v1/events",
                    json={"type": quiet_type, "data": {}},
                    headers={"Idempotency-Key": uuid.uuid4().hex, "Eventrelay-Tenant": "b"},
                )
                assert response.status_code == 202, response.text
                round_ids.append(response.json()["id"])
                published[round_ids[-1]] = started
                await asyncio.sleep(ROUND_GAP)
            await wait_until(
                lambda ids=round_ids: all(quiet.for_event(i) for i in ids),
                STALL_SECONDS,
                interval=0.005,
                message="a round of tenant B's events to arrive",
            )
        loaded = {i: quiet.for_event(i)[0].at - at for i, at in published.items()}

        slowest = max(loaded, key=loaded.__getitem__)
        assert loaded[slowest] <= idle + ONE_CYCLE, (
            f"tenant B's event {slowest} took {loaded[slowest]:.2f} s behind tenant A's "
            f"backlog ({idle:.3f} s idle; polling every {RARE_POLL_SECONDS} s)"
        )
        assert len(busy.receipts) < TENANT_A_BACKLOGGED * TENANT_BACKLOG, "A had a backlog left"


RETRY_SECONDS = 0.2  # tenant B's retry schedule here
# Tenant A's answer time here: far longer than one cycle, so that a retry (or
# a first attempt) that waited for one of A's attempts to end would show.
CROWD_ANSWER_SECONDS = 4.0


async def _retried_latency(relay: Relay, receiver: Receiver, event_type: str) -> float:
    """Seconds from publishing one of tenant B's events until its second attempt
    (the first is answered 500) arrives."""
    started = time.monotonic()
    response = await relay.http.post(
        "/v1/events",
        json={"type": event_type, "data": {}},
        headers={"Idempotency-Key": uuid.uuid4().hex, "Eventrelay-Tenant": "b"},
    )
    assert response.status_code == 202, response.text
    event_id = response.json()["id"]
    receipts = await wait_until(
        lambda: receiver.for_event(event_id)[1:],
        STALL_SECONDS,
        interval=0.005,
        message=f"tenant B's event {event_id} to be retried",
    )
    return float(receipts[0].at - started)


async def test_another_tenants_retry_does_not_wait_behind_a_crowding_tenant(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    """Tenant A fills every slot but the reserve with attempts that answer only
    after seconds, and its subscriptions that hold none may not take the
    reserve's last slot; tenant B's retry falls due without a wake-up, while
    no attempt ends to wake the worker and polling is too rare to rescue it:
    B's first attempt and its retry still arrive within B's idle time plus one
    cycle."""
    fair = server_factory(
        database_url,
        env={
            "EVENTRELAY_WORKER_CONCURRENCY": str(CONCURRENCY),
            "EVENTRELAY_WORKER_POLL_SECONDS": str(RARE_POLL_SECONDS),
            "EVENTRELAY_SHUTDOWN_GRACE_SECONDS": "1",
        },
    )
    async with Relay(fair) as relay:
        for tenant in ("a", "b"):
            created = await relay.http.post("/v1/tenants", json={"id": tenant, "name": tenant})
            assert created.status_code == 201, created.text
        flaky = await receivers.start(scripted(500))
        flaky_type = unique_type("flaky")
        made = await relay.http.post(
            "/v1/subscriptions",
            json={
                "url": flaky.url(),
                "event_types": [flaky_type],
                "retry_schedule": [RETRY_SECONDS],
            },
            headers={"Eventrelay-Tenant": "b"},
        )
        assert made.status_code == 201, made.text
        idle = max([await _retried_latency(relay, flaky, flaky_type) for _ in range(SAMPLES)])

        busy = await _crowd(relay, receivers, CROWD_ANSWER_SECONDS, CONCURRENCY - 1)

        loaded = [await _retried_latency(relay, flaky, flaky_type) for _ in range(SAMPLES)]

        assert max(loaded) <= idle + ONE_CYCLE, (
            f"tenant B's retries took {loaded} s behind tenant A's backlog, {idle:.3f} s idle"
        )
        assert len(busy.receipts) < TENANT_BACKLOG, "tenant A's backlog was still long"
