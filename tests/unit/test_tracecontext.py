"""W3C Trace Context parsing and propagation, table-driven. No I/O."""

from __future__ import annotations

import pytest

from app.domain import tracecontext
from app.domain.tracecontext import TraceContext

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    ("header", "flags"),
    [
        (VALID, 1),
        (f"00-{TRACE}-{SPAN}-00", 0),
        (f"00-{TRACE}-{SPAN}-09", 1),  # unknown flags dropped, sampled kept
        (f"00-{TRACE}-{SPAN}-02", 0),
        (f" 00-{TRACE}-{SPAN}-01\t", 1),  # optional whitespace around a header value
        (f"cc-{TRACE}-{SPAN}-01", 1),  # a later version: its first four fields
        (f"cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like", 1),
    ],
)
def test_a_valid_traceparent_is_its_trace_span_and_sampled_flag(header: str, flags: int) -> None:
    assert tracecontext.parse(header) == TraceContext(TRACE, SPAN, flags)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"0-{TRACE}-{SPAN}-01",
        f"000-{TRACE}-{SPAN}-01",
        f"00-{TRACE.upper()}-{SPAN}-01",  # uppercase hex
        f"00-{TRACE}-{SPAN.upper()}-01",
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace ID
        f"00-{TRACE}0-{SPAN}-01",  # long trace ID
        f"00-{TRACE}-{SPAN[:-1]}-01",
        f"00-{TRACE}-{SPAN}0-01",
        f"00-{TRACE}-{SPAN}-1",
        f"00-{TRACE}-{SPAN}-0g",
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace ID
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent ID
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 is exactly 55 characters
        f"cc-{TRACE}-{SPAN}-01.extra",  # a later version's extra fields follow a dash
        f"00_{TRACE}_{SPAN}_01",
        f"00-{TRACE}-{SPAN}",
    ],
)
def test_an_invalid_traceparent_is_no_trace_context(header: str) -> None:
    assert tracecontext.parse(header, "rojo=00f067aa0ba902b7") is None


@pytest.mark.parametrize(
    ("tracestate", "kept"),
    [
        (None, None),
        ("rojo=00f067aa0ba902b7", "rojo=00f067aa0ba902b7"),
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        (" rojo=1 ,, congo=2,", "rojo=1,congo=2"),  # empty members and whitespace dropped
        ("tenant1@vendor=x", "tenant1@vendor=x"),
        ("", None),
        ("Rojo=1", None),  # keys are lowercase
        ("rojo", None),
        ("rojo=", None),
        ("rojo=a=b", None),  # no "=" in a value
        ("rojo=1,rojo=2", None),  # a key appears once
        (",".join(f"k{i}=v" for i in range(33)), None),  # at most 32 members
        (",".join(f"k{i}=" + "v" * 60 for i in range(9)), None),  # longer than 512
    ],
)
def test_tracestate_is_kept_only_when_valid(tracestate: str | None, kept: str | None) -> None:
    parsed = tracecontext.parse(VALID, tracestate)
    assert parsed is not None
    assert parsed.tracestate == kept


def test_tracestate_without_a_traceparent_is_dropped() -> None:
    assert tracecontext.parse(None, "rojo=1") is None


def test_a_child_keeps_the_trace_the_sampled_flag_and_the_tracestate() -> None:
    parent = tracecontext.parse(f"00-{TRACE}-{SPAN}-01", "rojo=1")
    assert parent is not None
    child = parent.child("b7ad6b7169203331")
    assert child.traceparent == f"00-{TRACE}-b7ad6b7169203331-01"
    assert tracecontext.headers(child) == {
        "traceparent": f"00-{TRACE}-b7ad6b7169203331-01",
        "tracestate": "rojo=1",
    }
    unsampled = TraceContext(TRACE, SPAN, 0)
    assert tracecontext.headers(unsampled.child("b7ad6b7169203331")) == {
        "traceparent": f"00-{TRACE}-b7ad6b7169203331-00"
    }


def test_a_new_trace_is_sampled_and_valid_and_never_all_zeros() -> None:
    fresh = tracecontext.new_trace()
    assert tracecontext.parse(fresh.traceparent) == fresh
    assert fresh.sampled
    assert tracecontext.new_trace() != fresh
    # A generator whose first IDs are all zeros must not produce an invalid one.
    draws = iter([bytes(24), bytes(16) + b"\x01" * 8, b"\x02" * 24])
    made = tracecontext.new_trace(lambda n: next(draws)[:n])
    assert (made.trace_id, made.span_id) == ("02" * 16, "02" * 8)
    assert tracecontext.parse(made.traceparent) == made
    spans = iter([bytes(8), b"\x03" * 8])
    assert tracecontext.new_span_id(lambda n: next(spans)) == "03" * 8


def test_child_headers_splice_a_stored_traceparent_like_headers_of_its_child() -> None:
    stored = tracecontext.parse(f"00-{TRACE}-{SPAN}-00", "rojo=1")
    assert stored is not None
    spliced = tracecontext.child_headers(stored.traceparent, "rojo=1", "b7ad6b7169203331")
    assert spliced == tracecontext.headers(stored.child("b7ad6b7169203331"))
    assert tracecontext.child_headers(VALID, None, "b7ad6b7169203331") == {
        "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"
    }
