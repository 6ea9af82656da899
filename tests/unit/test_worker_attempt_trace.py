"""Trace headers on delivery attempts, with a fake sender and no tracer. No I/O."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pytest

from app.domain import tracecontext
from app.domain.circuit import CircuitPolicy
from app.metrics import Metrics
from app.worker.attempt import AttemptStep
from app.worker.lines import LinePolicy
from app.worker.protocol import delivered
from tests.unit.worker_fakes import FakeSender, ready, subscription

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def send_twice(
    traceparent: str | None, tracestate: str | None, **fields: object
) -> tuple[list[dict[str, str]], list[str | None]]:
    """Two attempts of one event; the headers sent and the headers recorded."""
    sender = FakeSender(answer=lambda _: delivered(1))
    step = AttemptStep(sender, Metrics(), owner="w-1", retry_schedule=(1.0,), timeout_ms=1000)
    lines = LinePolicy(4, 1, CircuitPolicy())
    lines.load("sub_1", subscription("sub_1", **fields), time.monotonic())
    item = ready("sub_1")
    event = dataclasses.replace(item.event, traceparent=traceparent, tracestate=tracestate)
    recorded = []
    for _ in range(2):
        done = await step.run(lines.lines["sub_1"], item.delivery, event, item.payload)
        recorded.append(done.request_headers)
    return [dict(s.message.headers) for s in sender.sent], recorded


@pytest.mark.parametrize("flags", ["01", "00"])
async def test_each_attempt_is_a_new_span_in_the_events_trace(flags: str) -> None:
    sent, recorded = await send_twice(f"00-{TRACE}-{PARENT}-{flags}", "rojo=1,congo=2")

    children = [tracecontext.parse(h["traceparent"]) for h in sent]
    assert all(c is not None and c.trace_id == TRACE for c in children)
    span_ids = {c.span_id for c in children if c is not None}
    assert len(span_ids) == 2
    assert PARENT not in span_ids
    assert all(h["traceparent"].endswith(f"-{flags}") for h in sent)
    assert [h["tracestate"] for h in sent] == ["rojo=1,congo=2"] * 2
    # The attempt log records exactly what was sent.
    assert [orjson.loads(r or "null") for r in recorded] == sent


async def test_an_event_stored_without_a_trace_still_sends_a_valid_traceparent() -> None:
    sent, _ = await send_twice(None, None)
    assert all(tracecontext.parse(h["traceparent"]) is not None for h in sent)
    assert all("tracestate" not in h for h in sent)


async def test_a_subscriptions_custom_headers_cannot_replace_the_trace_headers() -> None:
    sent, _ = await send_twice(
        f"00-{TRACE}-{PARENT}-01",
        None,
        headers={"Traceparent": f"00-{'1' * 32}-{'2' * 16}-01", "tracestate": "evil=1"},
    )
    for headers in sent:
        names = [n.lower() for n in headers]
        assert names.count("traceparent") == 1
        assert "tracestate" not in names
        assert headers["traceparent"].startswith(f"00-{TRACE}-")
