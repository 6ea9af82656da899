"""Tracing: OpenTelemetry spans for ingest and delivery, when asked for.

The standard ``OTEL_*`` variables decide (:func:`wanted`). Unset, there is no
tracer at all: the API, the group committer and the attempt step hold ``None``
and only pass W3C trace headers on (:mod:`app.domain.tracecontext`); the
OpenTelemetry SDK is not even imported. Set, :func:`build` returns the SDK's
tracer behind the small protocols below (:mod:`app.otel`), so nothing else in
eventrelay imports OpenTelemetry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from app.domain.tracecontext import TraceContext


class IngestSpan(Protocol):
    """One ``POST /v1/events`` (or batch) request."""

    @property
    def context(self) -> TraceContext: ...

    def link(self, commit: TraceContext) -> None:
        """Point at the group commit that stored this request's events."""

    def end(self, status_code: int, error: BaseException | None = None) -> None: ...


class AttemptSpan(Protocol):
    """One delivery attempt; its context is the ``traceparent`` the attempt sends."""

    @property
    def context(self) -> TraceContext: ...

    def end(self, status_code: int | None, error: str | None, outcome: str) -> None:
        """``outcome``: ``success``, ``retry`` or ``dead_letter`` (as in the metrics)."""


class Tracer(Protocol):
    def ingest(self, route: str, parent: TraceContext | None) -> IngestSpan: ...

    def group_commit(self, requests: int) -> AbstractContextManager[TraceContext]: ...

    def attempt(
        self,
        parent: TraceContext,
        *,
        destination_type: str,
        subscription_id: str,
        delivery_id: str,
        event_id: str,
        event_type: str,
        attempt: int,
    ) -> AttemptSpan: ...

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""


@dataclass(frozen=True, slots=True)
class RequestTrace:
    """The trace context an ingest request stores with its events, and the
    request's span (with a tracer) that its group commit is linked to."""

    context: TraceContext
    span: IngestSpan | None = None


class TracingUnavailable(RuntimeError):
    """The OTEL_* variables ask for tracing that this installation cannot do."""


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for spans: ``OTEL_TRACES_EXPORTER`` set to
    anything but ``none``, or an OTLP endpoint given; never with
    ``OTEL_SDK_DISABLED=true``. (The SDK's own default exporter is OTLP; here
    nothing set means no tracing, so an installation that never mentions
    OpenTelemetry pays nothing for it.)"""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def build(environ: Mapping[str, str] | None = None) -> Tracer | None:
    """The tracer the OTEL_* variables ask for, or None; raises
    :class:`TracingUnavailable` when they ask for what cannot be done."""
    env = os.environ if environ is None else environ
    if not wanted(env):
        return None
    try:
        from app import otel
    except ImportError as exc:  # the optional extra is not installed
        raise TracingUnavailable(
            "OTEL_* variables ask for tracing, but OpenTelemetry is not installed: "
            "pip install 'eventrelay[tracing]'"
        ) from exc
    return otel.OtelTracer.from_environment(env)
