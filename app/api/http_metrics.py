"""HTTP metrics: prometheus-fastapi-instrumentator's metric families, recorded cheaply.

The families, labels, buckets and help texts are the instrumentator's defaults
(``metrics.default()``), so dashboards and alerts written for it work
unchanged:

* ``http_requests_total{method,status,handler}`` (status grouped: ``2xx``)
* ``http_request_size_bytes{handler}`` and ``http_response_size_bytes{handler}``
  (summaries of the ``Content-Length`` headers)
* ``http_request_duration_highr_seconds`` (many buckets, no labels)
* ``http_request_duration_seconds{method,handler}`` (few buckets)

What differs is the cost. The instrumentator's middleware matches the request
against every route again to name its handler, builds a Starlette ``Request``,
``Response`` and ``Headers`` per request and resolves five label sets; that
was ~60 µs a request here, a fifth of the ingest path (BENCHMARKS.md). This
middleware reads the route the router already matched (``scope["route"]``)
and keeps the labelled children per (handler, method, status), so a request
costs a dictionary lookup and five observations.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, Summary
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HIGHR_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5,
    4, 4.5, 5, 7.5, 10, 30, 60,
)  # fmt: skip
LOWR_BUCKETS = (0.1, 0.5, 1)
UNTEMPLATED = "none"  # the handler label of a request no route matched (a 404)

_CONTENT_LENGTH = b"content-length"


class _Series:
    """The children of one (handler, method, status) combination."""

    __slots__ = ("in_size", "latency", "out_size", "total")

    def __init__(self, families: HttpMetrics, handler: str, method: str, status: str) -> None:
        self.total = families.total.labels(method, status, handler)
        self.in_size = families.in_size.labels(handler)
        self.out_size = families.out_size.labels(handler)
        self.latency = families.latency.labels(method, handler)


class HttpMetrics:
    """Pure ASGI middleware; ``excluded`` handlers (route paths) are not recorded."""

    def __init__(
        self, app: ASGIApp, *, registry: CollectorRegistry, excluded: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.excluded = frozenset(excluded)
        self.total = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ("method", "status", "handler"),
            registry=registry,
        )
        self.in_size = Summary(
            "http_request_size_bytes",
            "Content length of incoming requests by handler. "
            "Only value of header is respected. Otherwise ignored. "
            "No percentile calculated. ",
            ("handler",),
            registry=registry,
        )
        self.out_size = Summary(
            "http_response_size_bytes",
            "Content length of outgoing responses by handler. "
            "Only value of header is respected. Otherwise ignored. "
            "No percentile calculated. ",
            ("handler",),
            registry=registry,
        )
        self.latency_highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. "
            "Made for more accurate percentile calculations. ",
            buckets=HIGHR_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. "
            "Made to be only used if aggregation by handler is important. ",
            ("method", "handler"),
            buckets=LOWR_BUCKETS,
            registry=registry,
        )
        self._series: dict[tuple[str, str, str], _Series] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what an exception that escapes the app becomes
        sent = 0

        async def record_status(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                sent = _content_length(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path", None) or UNTEMPLATED
            if handler not in self.excluded:
                self._observe(
                    handler,
                    scope["method"],
                    status,
                    _content_length(scope["headers"]),
                    sent,
                    max(time.perf_counter() - start, 0.0),
                )

    def _observe(
        self, handler: str, method: str, status: int, received: int, sent: int, seconds: float
    ) -> None:
        group = f"{str(status)[0]}xx"
        series = self._series.get((handler, method, group))
        if series is None:
            series = self._series[handler, method, group] = _Series(self, handler, method, group)
        series.total.inc()
        series.in_size.observe(received)
        series.out_size.observe(sent)
        self.latency_highr.observe(seconds)
        series.latency.observe(seconds)


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == _CONTENT_LENGTH:
            return int(value) if value.isdigit() else 0
    return 0
