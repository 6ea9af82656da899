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
``Response`` and ``Headers`` per request and updates five metrics under nine
locks; that was ~60 µs a request here, a fifth of the ingest path
(BENCHMARKS.md). Here the request-ID middleware
(:class:`app.api.middleware.RequestTelemetry`) times the request in the same
pass, and :class:`HttpMetrics` takes the route the router already matched
(``scope["route"]``) and adds to plain numbers per (handler, method, status),
which a collector turns into the families when Prometheus scrapes. Requests
are recorded on the event loop's thread only; a scrape copies the numbers
first, and derives each histogram's count from its buckets so the two always
agree. (The ``*_created`` series prometheus_client would add are not exported.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from starlette.types import Scope

from app.metrics import Observed, cumulative_buckets

HIGHR_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5,
    4, 4.5, 5, 7.5, 10, 30, 60,
)  # fmt: skip
LOWR_BUCKETS = (0.1, 0.5, 1)
UNTEMPLATED = "none"  # the handler label of a request no route matched (a 404)

CONTENT_LENGTH = b"content-length"
_SIZE_NOTE = "Only value of header is respected. Otherwise ignored. No percentile calculated. "
HELP = {
    "http_requests": "Total number of requests by method, status and handler.",
    "http_request_size_bytes": f"Content length of incoming requests by handler. {_SIZE_NOTE}",
    "http_response_size_bytes": f"Content length of outgoing responses by handler. {_SIZE_NOTE}",
    "http_request_duration_highr_seconds": (
        "Latency with many buckets but no API specific labels. "
        "Made for more accurate percentile calculations. "
    ),
    "http_request_duration_seconds": (
        "Latency with only few buckets by handler. "
        "Made to be only used if aggregation by handler is important. "
    ),
}


_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}


class _Series:
    """What was observed for one (handler, method, status class)."""

    __slots__ = ("count", "latency", "received", "sent")

    def __init__(self) -> None:
        self.count = 0
        self.received = 0
        self.sent = 0
        self.latency = Observed(LOWR_BUCKETS)


class HttpMetrics:
    """The HTTP metric families: :class:`app.api.middleware.RequestTelemetry` records
    each request here, and a collector on ``registry`` exports them. Requests to
    ``excluded`` handlers (route paths) are not recorded."""

    def __init__(self, *, registry: CollectorRegistry, excluded: Iterable[str] = ()) -> None:
        self.excluded = frozenset(excluded)
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._highr = Observed(HIGHR_BUCKETS)
        registry.register(_Exporter(self))

    def record(self, scope: Scope, status: int, received: int, sent: int, seconds: float) -> None:
        """One finished request: its route (set by the router), method and status."""
        handler = getattr(scope.get("route"), "path", None) or UNTEMPLATED
        if handler not in self.excluded:
            self._observe(handler, scope["method"], status, received, sent, max(seconds, 0.0))

    def _observe(
        self, handler: str, method: str, status: int, received: int, sent: int, seconds: float
    ) -> None:
        group = status // 100
        key = (handler, method, _STATUS_CLASS.get(group) or f"{group}xx")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.count += 1
        series.received += received
        series.sent += sent
        # Observed.observe() inlined: the two calls would add ~15% to record().
        latency, highr = series.latency, self._highr
        latency.counts[bisect_left(LOWR_BUCKETS, seconds)] += 1
        latency.sum += seconds
        highr.counts[bisect_left(HIGHR_BUCKETS, seconds)] += 1
        highr.sum += seconds

    def families(self) -> Iterator[Metric]:
        """The metric families, from a copy of what has been observed so far."""
        snapshot = [
            (key, s.count, s.received, s.sent, *s.latency.snapshot())
            for key, s in list(self._series.items())
        ]
        total = CounterMetricFamily(
            "http_requests", HELP["http_requests"], labels=("method", "status", "handler")
        )
        received = SummaryMetricFamily(
            "http_request_size_bytes", HELP["http_request_size_bytes"], labels=("handler",)
        )
        sent = SummaryMetricFamily(
            "http_response_size_bytes", HELP["http_response_size_bytes"], labels=("handler",)
        )
        latency = HistogramMetricFamily(
            "http_request_duration_seconds",
            HELP["http_request_duration_seconds"],
            labels=("method", "handler"),
        )
        by_handler: dict[str, tuple[int, int, int]] = {}
        by_route: dict[tuple[str, str], tuple[list[int], float]] = {}
        for (handler, method, status), count, in_bytes, out_bytes, buckets, seconds in snapshot:
            total.add_metric((method, status, handler), count)
            n, i, o = by_handler.get(handler, (0, 0, 0))
            by_handler[handler] = (n + count, i + in_bytes, o + out_bytes)
            counts, sum_seconds = by_route.get((method, handler), ([0] * len(buckets), 0.0))
            by_route[method, handler] = (
                [a + b for a, b in zip(counts, buckets, strict=True)],
                sum_seconds + seconds,
            )
        for handler, (n, in_bytes, out_bytes) in by_handler.items():
            received.add_metric((handler,), n, in_bytes)
            sent.add_metric((handler,), n, out_bytes)
        for (method, handler), (counts, sum_seconds) in by_route.items():
            latency.add_metric(
                (method, handler), cumulative_buckets(LOWR_BUCKETS, counts), sum_seconds
            )
        highr = HistogramMetricFamily(
            "http_request_duration_highr_seconds", HELP["http_request_duration_highr_seconds"]
        )
        highr_counts, highr_sum = self._highr.snapshot()
        highr.add_metric((), cumulative_buckets(HIGHR_BUCKETS, highr_counts), highr_sum)
        yield from (total, received, sent, highr, latency)


class _Exporter(Collector):
    def __init__(self, metrics: HttpMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families are known only once requests are seen


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The ``Content-Length`` of ASGI headers; 0 when absent or not a number."""
    for name, value in headers:
        if name == CONTENT_LENGTH:
            return int(value) if value.isdigit() else 0
    return 0
