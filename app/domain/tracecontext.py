"""W3C Trace Context: the ``traceparent`` / ``tracestate`` an event carries.

An event is stored with the trace context it arrived in (or a new one), and
every delivery attempt sends a child of it: the event's trace ID, a span ID of
its own, the sampled flag kept, the ``tracestate`` as received.
:func:`headers` builds what an attempt sends, whatever the destination.

Parsing follows the W3C rules: a version of two lowercase hex digits other
than ``ff``; version ``00`` is exactly 55 characters, a later version at least
that, its extra fields after a ``-``; trace and parent IDs of 32 and 16
lowercase hex digits, not all zeros. Anything else is no trace context at all,
and a ``tracestate`` without a valid ``traceparent``, or not itself valid, is
dropped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = 0x01
TRACEPARENT_LENGTH = 55

# tracestate: at most 32 list members ``key=value``, keys simple or
# ``tenant@system``, values printable ASCII without ``,`` and ``=`` (W3C §3.3).
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"{_KEY}={_VALUE}")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_LENGTH = 512


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: the trace, the span that is the parent, its flags."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    flags: int  # only the sampled bit is kept
    tracestate: str | None = None

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self, span_id: str) -> TraceContext:
        """The context a span of this trace with ``span_id`` hands on."""
        return TraceContext(self.trace_id, span_id, self.flags, self.tracestate)


def parse(traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
    """The context of a ``traceparent`` header (and its ``tracestate``), or None when
    it is absent or invalid."""
    if traceparent is None:
        return None
    value = traceparent.strip(" \t")
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if len(value) != TRACEPARENT_LENGTH and (version == "00" or value[TRACEPARENT_LENGTH] != "-"):
        return None
    return TraceContext(trace_id, span_id, int(flags, 16) & SAMPLED, parse_tracestate(tracestate))


def parse_tracestate(tracestate: str | None) -> str | None:
    """``tracestate`` with empty members dropped, or None when it is absent, invalid
    or longer than 512 characters (the W3C limit a vendor must propagate)."""
    if tracestate is None:
        return None
    members = [m.strip(" \t") for m in tracestate.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    if not all(_MEMBER.fullmatch(m) for m in members):
        return None
    keys = [m.split("=", 1)[0] for m in members]
    if len(set(keys)) != len(keys):
        return None
    value = ",".join(members)
    return value if len(value) <= MAX_TRACESTATE_LENGTH else None


# IDs need to be unique, not secret: OpenTelemetry's SDK uses the same generator.
RandomBytes = Callable[[int], bytes]


def new_span_id(random_bytes: RandomBytes = random.randbytes) -> str:
    while True:
        span_id = random_bytes(8).hex()
        if span_id != _ZERO_SPAN:
            return span_id


def new_trace(random_bytes: RandomBytes = random.randbytes) -> TraceContext:
    """A new trace for an event that came without one. Sampled, so that receivers
    that sample by their parent record it."""
    while True:
        ids = random_bytes(24).hex()
        trace_id, span_id = ids[:32], ids[32:]
        if trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN:
            return TraceContext(trace_id, span_id, SAMPLED)


def headers(context: TraceContext) -> dict[str, str]:
    """The trace headers a delivery attempt sends (HTTP headers, broker message
    headers alike): ``context`` is the attempt's own span."""
    if context.tracestate:
        return {"traceparent": context.traceparent, "tracestate": context.tracestate}
    return {"traceparent": context.traceparent}


def child_headers(stored: str, tracestate: str | None, span_id: str) -> dict[str, str]:
    """:func:`headers` for a span ``span_id`` under a stored event's context.

    ``stored`` is a ``traceparent`` as this module writes it (version 00, only
    the sampled flag), so the new one is spliced from it rather than parsed
    again: this runs for every delivery attempt."""
    traceparent = f"00-{stored[3:35]}-{span_id}-{stored[53:55]}"
    if tracestate:
        return {"traceparent": traceparent, "tracestate": tracestate}
    return {"traceparent": traceparent}
