"""``/metrics`` of the real processes: every named metric is there, and moves.

One ``eventrelay serve`` (embedded worker) per backend is shared by the
module; each test has its own event type, subscription and loopback receiver,
and compares scrapes taken before and after what it does. Counters are exact
(the tests run one after another and each waits until its deliveries have
settled). The database gauges refresh every 5 s, so they are polled with a
deadline. The last test runs a standalone ``eventrelay worker`` with its
metrics port beside a ``serve --no-worker`` on one SQLite file: counters are
per process, the database gauges the same in both.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerFactory, ServerProcess, free_port, start_module_server
from tests.e2e.procs import Relay, WorkerPool, unique_type, worker_pool
from tests.e2e.receivers import ReceiverPool, scripted, slow, wait_until

SETTLE_SECONDS = 15.0
GAUGE_SECONDS = 15.0  # the database gauges refresh every 5 s
CIRCUIT_THRESHOLD = 2  # so that one dead letter (two failed attempts) opens the circuit

# Every family the operator documentation names, with its type.
FAMILIES = {
    "eventrelay_events_ingested": "counter",
    "eventrelay_idempotent_replays": "counter",
    "eventrelay_delivery_attempts": "counter",
    "eventrelay_delivery_attempt_duration_seconds": "histogram",
    "eventrelay_delivery_latency_seconds": "histogram",
    "eventrelay_deliveries": "gauge",
    "eventrelay_subscription_deliveries": "gauge",
    "eventrelay_oldest_pending_delivery_age_seconds": "gauge",
    "eventrelay_delivery_lag_seconds": "gauge",
    "eventrelay_subscriptions": "gauge",
    "eventrelay_subscription_circuit_state": "gauge",
    "eventrelay_subscription_consecutive_failures": "gauge",
    "eventrelay_group_commit_batch_size": "histogram",
    "eventrelay_claim_duration_seconds": "histogram",
    "eventrelay_deliveries_claimed": "counter",
    "eventrelay_worker_in_flight": "gauge",
    "eventrelay_worker_stepped_aside_seconds": "counter",
    "http_requests": "counter",
    "http_request_duration_seconds": "histogram",
}
WORKER_FAMILIES = {
    name: kind
    for name, kind in FAMILIES.items()
    if not name.startswith(("http_", "eventrelay_events", "eventrelay_idem", "eventrelay_group"))
}
OUTCOMES = ("success", "retry", "dead_letter")
STATUSES = ("pending", "in_flight", "dead")


# -- scraping -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One parsed ``/metrics`` answer."""

    types: dict[str, str]  # family name -> type
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        types: dict[str, str] = {}
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(types, samples)

    def get(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def __call__(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 for one not exported yet)."""
        return self.get(name, **labels) or 0.0

    def label_values(self, name: str, label: str) -> set[str]:
        found = (dict(labels) for n, labels in self.samples if n == name)
        return {labels[label] for labels in found if label in labels}


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=5.0) as client:  # no credentials: /metrics is open
        response = await client.get(url)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Scrape.parse(response.text)


def metrics_url(server: ServerProcess) -> str:
    return f"{server.base_url}/metrics"


async def gauges_until(
    url: str, check: Callable[[Scrape], bool], message: str, timeout: float = GAUGE_SECONDS
) -> Scrape:
    """Scrape until ``check(scrape)`` holds (the gauges lag the database by ≤ 5 s)."""
    last: list[Scrape] = []

    async def attempt() -> Scrape | None:
        last[:] = [await scrape(url)]
        return last[0] if check(last[0]) else None

    def explain() -> str:
        if not last:
            return message
        shown = {
            f"{name}{dict(labels)}": value
            for (name, labels), value in last[0].samples.items()
            if name.startswith(("eventrelay_deliveries", "eventrelay_subscription"))
        }
        return f"{message}; last scrape: {shown}"

    found: Scrape = await wait_until(attempt, timeout, interval=0.2, message=explain)
    return found


def assert_moved(before: Scrape, after: Scrape, expected: dict[tuple[str, str], float]) -> None:
    """Each (sample, outcome label or '') moved by exactly the expected amount."""
    moved = {}
    for name, outcome in expected:
        labels = {"outcome": outcome} if outcome else {}
        moved[(name, outcome)] = after(name, **labels) - before(name, **labels)
    assert moved == expected


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"EVENTRELAY_CIRCUIT_FAILURE_THRESHOLD": str(CIRCUIT_THRESHOLD)}
    yield from start_module_server(module_database_url, tmp_path_factory, env=env)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerPool]:
    yield from worker_pool(tmp_path)


async def settled(relay: Relay, event_id: str, *statuses: str) -> dict[str, Any]:
    found: dict[str, Any] = await wait_until(
        lambda: relay.delivery_in(event_id, *statuses),
        SETTLE_SECONDS,
        interval=0.05,
        message=f"the delivery of {event_id} to become {'/'.join(statuses)}",
    )
    return found


# -- the tests ----------------------------------------------------------------------


async def test_every_named_metric_is_exported_with_its_type(shared_server: ServerProcess) -> None:
    found = await gauges_until(
        metrics_url(shared_server),
        lambda s: "eventrelay_deliveries" in s.types,
        "the first refresh of the database gauges",
    )
    missing = {name for name in FAMILIES if name not in found.types}
    assert not missing, f"not on /metrics: {sorted(missing)}"
    assert {name: found.types[name] for name in FAMILIES} == FAMILIES
    assert found.label_values("eventrelay_delivery_attempts_total", "outcome") == set(OUTCOMES)
    assert found.label_values("eventrelay_deliveries", "status") == set(STATUSES)
    assert found.label_values("eventrelay_subscriptions", "status") == {
        "active",
        "paused",
        "disabled",
    }
    # The readiness polls of the fixture went through the instrumentator.
    assert found("http_requests_total", handler="/readyz", method="GET", status="2xx") >= 1


async def test_ingest_and_replay_move_their_counters(
    shared_server: ServerProcess, relay: Relay
) -> None:
    url = metrics_url(shared_server)
    before = await scrape(url)
    body = {"type": unique_type("ingest"), "data": {"n": 1}}
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    first = await relay.http.post("/v1/events", json=body, headers=headers)
    again = await relay.http.post("/v1/events", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202), (first.text, again.text)
    assert again.headers.get("idempotent-replayed") == "true"
    after = await scrape(url)

    assert_moved(
        before,
        after,
        {
            ("eventrelay_events_ingested_total", ""): 1,
            ("eventrelay_idempotent_replays_total", ""): 1,
        },
    )
    assert after("eventrelay_group_commit_batch_size_count") > before(
        "eventrelay_group_commit_batch_size_count"
    )
    assert (
        after("eventrelay_group_commit_batch_size_sum")
        >= before("eventrelay_group_commit_batch_size_sum") + 1
    )
    posted = {"handler": "/v1/events", "method": "POST", "status": "2xx"}
    assert after("http_requests_total", **posted) - before("http_requests_total", **posted) == 2
    assert after("http_request_duration_seconds_count", handler="/v1/events", method="POST") > (
        before("http_request_duration_seconds_count", handler="/v1/events", method="POST")
    )


async def test_a_success_moves_attempts_duration_latency_and_claims(
    shared_server: ServerProcess, relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start()
    event_type = unique_type("ok")
    await relay.subscribe(receiver.url(), event_types=[event_type])
    url = metrics_url(shared_server)
    before = await scrape(url)
    accepted = await relay.publish(event_type, {"n": 1})
    await settled(relay, accepted["id"], "succeeded")
    after = await scrape(url)

    assert_moved(
        before,
        after,
        {
            ("eventrelay_delivery_attempts_total", "success"): 1,
            ("eventrelay_delivery_attempts_total", "retry"): 0,
            ("eventrelay_delivery_attempts_total", "dead_letter"): 0,
            ("eventrelay_delivery_attempt_duration_seconds_count", ""): 1,
            ("eventrelay_delivery_latency_seconds_count", ""): 1,
            ("eventrelay_deliveries_claimed_total", ""): 1,
        },
    )
    latency = after("eventrelay_delivery_latency_seconds_sum") - before(
        "eventrelay_delivery_latency_seconds_sum"
    )
    assert 0 < latency < SETTLE_SECONDS
    assert after("eventrelay_claim_duration_seconds_count") > before(
        "eventrelay_claim_duration_seconds_count"
    )
    assert after("eventrelay_worker_in_flight") == 0


async def test_a_retry_then_a_success_count_both(
    shared_server: ServerProcess, relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start(scripted(500))
    event_type = unique_type("retry")
    await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=[0.05])
    url = metrics_url(shared_server)
    before = await scrape(url)
    accepted = await relay.publish(event_type, {"n": 1})
    delivery = await settled(relay, accepted["id"], "succeeded", "dead")
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2), delivery
    after = await scrape(url)

    assert_moved(
        before,
        after,
        {
            ("eventrelay_delivery_attempts_total", "success"): 1,
            ("eventrelay_delivery_attempts_total", "retry"): 1,
            ("eventrelay_delivery_attempts_total", "dead_letter"): 0,
            ("eventrelay_delivery_attempt_duration_seconds_count", ""): 2,
            ("eventrelay_delivery_latency_seconds_count", ""): 1,
        },
    )


async def test_a_dead_letter_is_counted_and_shows_in_the_database_gauges(
    shared_server: ServerProcess, relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start(scripted(then=500))
    event_type = unique_type("dead")
    sub = await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=[0.05])
    url = metrics_url(shared_server)
    before = await scrape(url)
    accepted = await relay.publish(event_type, {"n": 1})
    delivery = await settled(relay, accepted["id"], "dead")
    assert delivery["attempts"] == 2, delivery
    after = await scrape(url)
    assert_moved(
        before,
        after,
        {
            ("eventrelay_delivery_attempts_total", "success"): 0,
            ("eventrelay_delivery_attempts_total", "retry"): 1,
            ("eventrelay_delivery_attempts_total", "dead_letter"): 1,
            ("eventrelay_delivery_attempt_duration_seconds_count", ""): 2,
            ("eventrelay_delivery_latency_seconds_count", ""): 0,
        },
    )

    dead_in_database = (await relay.stats())["deliveries"]["dead"]
    assert dead_in_database >= 1
    sid = sub["id"]
    gauges = await gauges_until(
        url,
        lambda s: (
            s(
                "eventrelay_subscription_deliveries",
                subscription_id=sid,
                status="dead",
                tenant_id="default",
            )
            == 1
        ),
        f"the dead letter of {sid} in eventrelay_subscription_deliveries",
    )
    assert gauges("eventrelay_deliveries", status="dead") == dead_in_database
    assert (
        gauges(
            "eventrelay_subscription_consecutive_failures", subscription_id=sid, tenant_id="default"
        )
        == 2
    )
    # Two failures in a row reach the threshold of this server: the circuit is open.
    assert (
        gauges("eventrelay_subscription_circuit_state", subscription_id=sid, tenant_id="default")
        == 2
    )
    assert gauges.get(
        "eventrelay_subscription_deliveries",
        subscription_id=sid,
        status="pending",
        tenant_id="default",
    ) in (
        None,
        0,
    )


async def test_pending_in_flight_and_disabled_show_in_the_database_gauges(
    shared_server: ServerProcess, relay: Relay, receivers: ReceiverPool
) -> None:
    url = metrics_url(shared_server)
    # Pending: an event for a paused subscription waits, and ages.
    parked = await receivers.start()
    parked_type = unique_type("parked")
    paused = await relay.subscribe(parked.url(), event_types=[parked_type])
    await relay.patch(paused["id"], status="paused")
    await relay.publish(parked_type, {"n": 1})
    # In flight: the receiver holds the request until the test lets go.
    release = asyncio.Event()
    holder = await receivers.start(slow(60, cut_short=release))
    held_type = unique_type("held")
    held = await relay.subscribe(holder.url(), event_types=[held_type], timeout_ms=60_000)
    held_event = await relay.publish(held_type, {"n": 2})
    # Disabled: 410 Gone dead-letters the delivery and disables the subscription.
    gone = await receivers.start(scripted(then=410))
    gone_type = unique_type("gone")
    gone_sub = await relay.subscribe(gone.url(), event_types=[gone_type])
    gone_event = await relay.publish(gone_type, {"n": 3})
    try:
        await wait_until(lambda: holder.in_progress(), SETTLE_SECONDS, message="the held request")
        await settled(relay, gone_event["id"], "dead")
        assert (await relay.subscription(gone_sub["id"]))["status"] == "disabled"

        def shows_all(s: Scrape) -> bool:
            return (
                s(
                    "eventrelay_subscription_deliveries",
                    subscription_id=paused["id"],
                    status="pending",
                    tenant_id="default",
                )
                == 1
                and s(
                    "eventrelay_subscription_deliveries",
                    subscription_id=held["id"],
                    status="in_flight",
                    tenant_id="default",
                )
                == 1
                and s("eventrelay_subscriptions", status="disabled") >= 1
            )

        gauges = await gauges_until(url, shows_all, "pending, in-flight and disabled")
        assert gauges("eventrelay_deliveries", status="pending") >= 1
        assert gauges("eventrelay_deliveries", status="in_flight") >= 1
        assert gauges("eventrelay_oldest_pending_delivery_age_seconds") > 0
        assert gauges("eventrelay_subscriptions", status="paused") >= 1
        assert gauges("eventrelay_worker_in_flight") == 1
    finally:
        release.set()
    await settled(relay, held_event["id"], "succeeded")
    assert (await scrape(url))("eventrelay_worker_in_flight") == 0


async def test_a_standalone_worker_serves_its_own_metrics(
    server_factory: ServerFactory,
    sqlite_file_url: str,
    workers: WorkerPool,
    receivers: ReceiverPool,
) -> None:
    database_url = sqlite_file_url  # one file, two processes
    api = server_factory(database_url, worker=False)
    receiver = await receivers.start()
    async with Relay(api) as relay:
        # Subscribed and published before the worker starts: it delivers at once,
        # and its first gauge refresh already sees the subscription.
        event_type = unique_type("worker")
        await relay.subscribe(receiver.url(), event_types=[event_type])
        accepted = await relay.publish(event_type, {"n": 1})
        port = free_port()
        worker = workers.make(database_url, env={"EVENTRELAY_WORKER_METRICS_PORT": str(port)})
        worker.start()
        await settled(relay, accepted["id"], "succeeded")

    worker_url = f"http://127.0.0.1:{port}/metrics"
    on_worker = await scrape(worker_url)
    assert {n: on_worker.types.get(n) for n in WORKER_FAMILIES} == WORKER_FAMILIES
    on_api = await scrape(metrics_url(api))
    # Counters are per process: the worker delivered, the API ingested.
    assert on_worker("eventrelay_delivery_attempts_total", outcome="success") == 1
    assert on_worker("eventrelay_delivery_attempt_duration_seconds_count") == 1
    assert on_worker("eventrelay_delivery_latency_seconds_count") == 1
    assert on_worker("eventrelay_deliveries_claimed_total") >= 1
    assert on_worker("eventrelay_events_ingested_total") == 0
    assert on_api("eventrelay_events_ingested_total") == 1
    assert on_api("eventrelay_delivery_attempts_total", outcome="success") == 0

    # The database gauges are the same wherever they are read.
    def one_active(s: Scrape) -> bool:
        return s("eventrelay_subscriptions", status="active") == 1

    await gauges_until(worker_url, one_active, "the worker's subscription gauge")
    await gauges_until(metrics_url(api), one_active, "the API's subscription gauge")
