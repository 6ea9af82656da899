"""The OpenTelemetry SDK behind :class:`app.tracing.Tracer` (imported only when
the OTEL_* variables ask for spans; the ``tracing`` extra installs it).

The SDK configures itself from the standard variables: the OTLP/HTTP exporter
its endpoint, headers, timeout and compression, the batch processor its
queue, the sampler ``OTEL_TRACES_SAMPLER``, the resource ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` is ``eventrelay`` unless
they name one). Spans:

- ``POST /v1/events`` (server): one per ingest request, the child of the
  request's ``traceparent``; linked to the group commit that stored it;
- ``eventrelay group commit`` (internal): one per ingest transaction, a trace
  of its own, shared by the requests it stored;
- ``deliver <event type>`` (client; producer for a broker): one per delivery
  attempt, the child of the event's trace context; its own context is the
  ``traceparent`` the attempt sends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from app import __version__
from app.domain.tracecontext import TraceContext
from app.tracing import TracingUnavailable

_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


class OtelTracer:
    """:class:`app.tracing.Tracer` over one SDK tracer provider (never the global one)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("eventrelay", __version__)

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> OtelTracer:
        provider = TracerProvider(resource=_resource())
        for exporter in _exporters(env):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def ingest(self, route: str, parent: TraceContext | None) -> _IngestSpan:
        span = self._tracer.start_span(
            f"POST {route}",
            context=_parent(parent),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route},
        )
        return _IngestSpan(span)

    @contextmanager
    def group_commit(self, requests: int) -> Iterator[TraceContext]:
        with self._tracer.start_as_current_span(
            "eventrelay group commit",
            context=Context(),
            kind=SpanKind.INTERNAL,
            attributes={"eventrelay.group_commit.requests": requests},
        ) as span:
            yield _context(span)

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
    ) -> _AttemptSpan:
        span = self._tracer.start_span(
            f"deliver {event_type}",
            context=_parent(parent),
            kind=SpanKind.CLIENT if destination_type == "webhook" else SpanKind.PRODUCER,
            attributes={
                "eventrelay.destination.type": destination_type,
                "eventrelay.subscription.id": subscription_id,
                "eventrelay.delivery.id": delivery_id,
                "eventrelay.event.id": event_id,
                "eventrelay.event.type": event_type,
                "eventrelay.attempt": attempt,
            },
        )
        return _AttemptSpan(span)

    def shutdown(self) -> None:
        self._provider.shutdown()


class _IngestSpan:
    __slots__ = ("_span", "context")

    def __init__(self, span: Span) -> None:
        self._span = span
        self.context = _context(span)

    def link(self, commit: TraceContext) -> None:
        self._span.add_link(_span_context(commit, remote=False))

    def end(self, status_code: int, error: BaseException | None = None) -> None:
        self._span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            if error is not None:
                self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, f"HTTP {status_code}"))
        self._span.end()


class _AttemptSpan:
    __slots__ = ("_span", "context")

    def __init__(self, span: Span) -> None:
        self._span = span
        self.context = _context(span)

    def end(self, status_code: int | None, error: str | None, outcome: str) -> None:
        if status_code is not None:
            self._span.set_attribute("http.response.status_code", status_code)
        self._span.set_attribute("eventrelay.attempt.outcome", outcome)
        if outcome != "success":
            self._span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status_code}"))
        self._span.end()


def _resource() -> Resource:
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    resource = Resource.create({SERVICE_VERSION: __version__})
    name = resource.attributes.get(SERVICE_NAME)
    if not name or str(name).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "eventrelay"}))
    return resource


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    exporters: list[SpanExporter] = []
    for name in filter(None, names):
        if name == "otlp":
            _require_http_protobuf(env)
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none"
            )
    return exporters


def _require_http_protobuf(env: Mapping[str, str]) -> None:
    for variable in _PROTOCOLS:
        protocol = env.get(variable, "").strip().lower()
        if protocol and protocol != "http/protobuf":
            raise TracingUnavailable(
                f"{variable}={protocol!r} is not supported: eventrelay exports over "
                "OTLP/HTTP (http/protobuf)"
            )
        if protocol:
            return


def _span_context(context: TraceContext, *, remote: bool) -> SpanContext:
    state = TraceState.from_header([context.tracestate]) if context.tracestate else TraceState()
    return SpanContext(
        trace_id=int(context.trace_id, 16),
        span_id=int(context.span_id, 16),
        is_remote=remote,
        trace_flags=TraceFlags(context.flags),
        trace_state=state,
    )


def _parent(context: TraceContext | None) -> Context:
    """The context a span starts in: ``context`` as a remote parent, or none (a new
    trace; never whatever happens to be current)."""
    if context is None:
        return Context()
    parent = NonRecordingSpan(_span_context(context, remote=True))
    return trace.set_span_in_context(parent, Context())


def _context(span: Span) -> TraceContext:
    sc = span.get_span_context()
    state = sc.trace_state.to_header() if sc.trace_state else ""
    return TraceContext(
        format(sc.trace_id, "032x"),
        format(sc.span_id, "016x"),
        int(sc.trace_flags) & 0x01,
        state or None,
    )
