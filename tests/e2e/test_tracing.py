"""One event's trace from the producer to the receiver, as an OTLP backend sees it.

A real ``eventrelay serve`` with the standard OTEL_* variables exports spans
over OTLP/HTTP to a receiver this test runs on loopback
(:class:`tests.e2e.otlp.OtlpReceiver`, decoding the protobuf), and delivers to
a real webhook receiver. On both databases.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.domain import tracecontext
from tests.e2e.conftest import ServerFactory, ServerProcess
from tests.e2e.otlp import OtlpReceiver, ReceivedSpan
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import ReceiverPool, scripted, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
PRODUCER = f"00-{TRACE}-{PRODUCER_SPAN}-01"
SERVICE = "eventrelay-under-test"
SETTLE_SECONDS = 20.0


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    receiver = await OtlpReceiver().start()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest.fixture
def traced_server(
    database_url: str, server_factory: ServerFactory, otlp: OtlpReceiver
) -> ServerProcess:
    return server_factory(
        database_url,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_SERVICE_NAME": SERVICE,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # milliseconds: export soon after each span
        },
    )


async def publish(relay: Relay, event_type: str, headers: dict[str, str]) -> str:
    response = await relay.http.post(
        "/v1/events",
        json={"type": event_type, "data": {"n": 1}},
        headers={"Idempotency-Key": uuid.uuid4().hex, **headers},
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def spans_where(otlp: OtlpReceiver, what: str, predicate: Any) -> list[ReceivedSpan]:
    found: list[ReceivedSpan] = await wait_until(
        lambda: [s for s in otlp.spans if predicate(s)],
        SETTLE_SECONDS,
        interval=0.05,
        message=lambda: f"{what}; spans so far: {otlp.spans}",
    )
    return found


async def test_the_span_tree_of_one_event_from_the_producer_to_the_receiver(
    traced_server: ServerProcess, otlp: OtlpReceiver, receivers: ReceiverPool
) -> None:
    hook = await receivers.start(scripted(500))  # the first attempt fails, the second succeeds
    event_type = unique_type("trace")
    async with Relay(traced_server) as relay:
        sub = await relay.subscribe(hook.url(), event_types=[event_type], retry_schedule=[0.05])
        event_id = await publish(
            relay, event_type, {"traceparent": PRODUCER, "tracestate": "rojo=1,congo=2"}
        )
        await wait_until(
            lambda: relay.delivery_in(event_id, "succeeded"),
            SETTLE_SECONDS,
            message="the second attempt to succeed",
        )
        attempt_log = await relay.attempts(event_id)

    # The ingest span: the producer's child, a server span of the named service.
    (ingest,) = await spans_where(otlp, "the ingest span", lambda s: s.name == "POST /v1/events")
    assert (ingest.trace_id, ingest.parent_span_id) == (TRACE, PRODUCER_SPAN)
    assert (ingest.kind, ingest.service) == ("server", SERVICE)
    assert ingest.attributes["http.response.status_code"] == 202
    assert ingest.trace_state == "rojo=1,congo=2"

    # The group commit: a span of its own (its own trace) that the request links to.
    (link,) = ingest.links
    commit = otlp.by_id(link[1])
    assert commit is not None
    assert commit.name == "eventrelay group commit"
    assert commit.trace_id == link[0] != TRACE
    assert commit.parent_span_id is None
    assert commit.attributes["eventrelay.group_commit.requests"] >= 1

    # One span per attempt, children of the ingest span, in the producer's trace.
    def attempt_spans() -> list[ReceivedSpan]:
        mine = [s for s in otlp.spans if s.attributes.get("eventrelay.event.id") == event_id]
        return sorted(mine, key=lambda s: int(s.attributes["eventrelay.attempt"]))

    await wait_until(lambda: len(attempt_spans()) == 2, SETTLE_SECONDS, message="2 attempt spans")
    attempts = attempt_spans()
    for number, (span, status) in enumerate(zip(attempts, (500, 200), strict=True), start=1):
        assert span.name == f"deliver {event_type}"
        assert (span.trace_id, span.parent_span_id, span.kind) == (TRACE, ingest.span_id, "client")
        assert span.attributes["eventrelay.attempt"] == number
        assert span.attributes["eventrelay.subscription.id"] == sub["id"]
        assert span.attributes["eventrelay.destination.type"] == "webhook"
        assert span.attributes["http.response.status_code"] == status
        assert span.error == (status != 200)
        assert span.attributes["eventrelay.attempt.outcome"] == (
            "success" if number == 2 else "retry"
        )

    # What the receiver got is the attempt span's own context, tracestate kept;
    # and the attempt log shows the same request headers.
    received = hook.for_event(event_id)
    assert [r.headers["traceparent"] for r in received] == [
        f"00-{TRACE}-{span.span_id}-01" for span in attempts
    ]
    assert {r.headers["tracestate"] for r in received} == {"rojo=1,congo=2"}
    assert [a["request_headers"]["traceparent"] for a in attempt_log] == [
        r.headers["traceparent"] for r in received
    ]
    assert all(a["request_headers"]["webhook-id"] == event_id for a in attempt_log)


async def test_an_invalid_or_missing_traceparent_starts_a_new_trace(
    traced_server: ServerProcess, otlp: OtlpReceiver, receivers: ReceiverPool
) -> None:
    hook = await receivers.start()
    event_type = unique_type("trace")
    invalid = f"00-{'0' * 32}-{PRODUCER_SPAN}-01"  # an all-zero trace ID
    async with Relay(traced_server) as relay:
        await relay.subscribe(hook.url(), event_types=[event_type])
        events = [
            await publish(relay, event_type, {"traceparent": invalid, "tracestate": "rojo=1"}),
            await publish(relay, event_type, {}),
        ]
        await wait_until(
            lambda: all(hook.for_event(e) for e in events),
            SETTLE_SECONDS,
            message="both deliveries",
        )

    traces = set()
    for event_id in events:
        (attempt,) = await spans_where(
            otlp,
            "the attempt span",
            lambda s, e=event_id: s.attributes.get("eventrelay.event.id") == e,
        )
        ingest = otlp.by_id(attempt.parent_span_id or "")
        assert ingest is not None
        assert ingest.name == "POST /v1/events"
        # A root span: no parent, a trace of its own, nothing of the invalid header kept.
        assert ingest.parent_span_id is None
        assert ingest.trace_id not in (TRACE, "0" * 32)
        assert ingest.trace_state == ""
        (receipt,) = hook.for_event(event_id)
        sent = tracecontext.parse(receipt.headers["traceparent"])
        assert sent is not None
        assert (sent.trace_id, sent.span_id) == (ingest.trace_id, attempt.span_id)
        assert "tracestate" not in receipt.headers
        traces.add(ingest.trace_id)
    assert len(traces) == 2  # each event a trace of its own
