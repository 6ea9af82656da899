"""Prometheus metrics. One registry per app instance; nothing is registered at import.

The histograms a delivery attempt observes (its duration, by destination type
and in total, and the delivery's latency) are plain numbers the worker adds to
on its event loop's thread, exported by a collector when scraped: an
observation is a bisect and two additions, where prometheus_client's
``Histogram`` takes a lock for the sum and one for the bucket. Their families,
series, buckets and ``*_created`` samples are what ``Histogram`` exports.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

DESTINATION_TYPES = ("webhook", "rabbitmq", "nats", "redis")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.events_ingested = Counter(
            "eventrelay_events_ingested",
            "Events accepted and committed (replays excluded).",
            registry=self.registry,
        )
        self.idempotent_replays = Counter(
            "eventrelay_idempotent_replays",
            "Requests answered from a stored Idempotency-Key response.",
            registry=self.registry,
        )
        self.attempts = Counter(
            "eventrelay_delivery_attempts",
            "Delivery attempts by what they led to.",
            ["outcome"],
            registry=self.registry,
        )
        # Bound once: a label lookup per attempt costs more than the increment.
        outcomes = ("success", "retry", "dead_letter")
        self.attempt_outcome = {outcome: self.attempts.labels(outcome) for outcome in outcomes}
        # Each attempt is observed once, by its destination type; the total
        # series is their sum, added up when scraped.
        self.destination_duration = {kind: Observed(DURATION_BUCKETS) for kind in DESTINATION_TYPES}
        self.registry.register(
            Histograms(
                "eventrelay_delivery_attempt_duration_seconds",
                "Duration of one webhook request.",
                [((), _Total(list(self.destination_duration.values())))],
            )
        )
        # By destination type (webhook, rabbitmq, nats, redis) beside the totals above.
        self.destination_attempts = Counter(
            "eventrelay_destination_attempts",
            "Delivery attempts by destination type and what they led to.",
            ["destination", "outcome"],
            registry=self.registry,
        )
        self.destination_outcome = {
            (kind, outcome): self.destination_attempts.labels(kind, outcome)
            for kind in DESTINATION_TYPES
            for outcome in outcomes
        }
        self.registry.register(
            Histograms(
                "eventrelay_destination_attempt_duration_seconds",
                "Duration of one delivery attempt, by destination type.",
                [((kind,), series) for kind, series in self.destination_duration.items()],
                labelnames=("destination",),
            )
        )
        self.latency = Observed(LATENCY_BUCKETS)
        self.registry.register(
            Histograms(
                "eventrelay_delivery_latency_seconds",
                "From ingest to successful delivery.",
                [((), self.latency)],
            )
        )
        self.claim_duration = Histogram(
            "eventrelay_claim_duration_seconds",
            "Duration of one claim query (a batch of due deliveries).",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.claimed = Counter(
            "eventrelay_deliveries_claimed",
            "Deliveries claimed by this process's worker.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "eventrelay_worker_in_flight",
            "Webhook requests this process has in flight.",
            registry=self.registry,
        )
        self.stepped_aside = Counter(
            "eventrelay_worker_stepped_aside_seconds",
            "Seconds the embedded worker's thread waited for the API's requests in flight.",
            registry=self.registry,
        )
        self.group_commit_batch = Histogram(
            "eventrelay_group_commit_batch_size",
            "Requests sharing one ingest transaction.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def accepted(self, new: int, replayed: int) -> None:
        if new:
            self.events_ingested.inc(new)
        if replayed:
            self.idempotent_replays.inc(replayed)


class Observed:
    """One histogram series as plain numbers, observed on one thread (the
    delivery's here, the HTTP requests' in :mod:`app.api.http_metrics`)."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        return list(self.counts), self.sum


class _Total:
    """The sum of series with the same buckets, as one series."""

    def __init__(self, parts: list[Observed]) -> None:
        self.bounds = parts[0].bounds
        self.created = time.time()
        self._parts = parts

    def snapshot(self) -> tuple[list[int], float]:
        counts = [0] * (len(self.bounds) + 1)
        total = 0.0
        for part in self._parts:
            part_counts, part_sum = part.snapshot()
            counts = [a + b for a, b in zip(counts, part_counts, strict=True)]
            total += part_sum
        return counts, total


class Histograms(Collector):
    """Exports series of :class:`Observed` as one histogram family. A scrape
    (perhaps on another thread) copies each series' buckets first and derives
    its count from them, so the two always agree."""

    def __init__(
        self,
        name: str,
        documentation: str,
        series: list[tuple[tuple[str, ...], Observed | _Total]],
        labelnames: Sequence[str] = (),
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._series = series
        self._labelnames = labelnames

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        created = _created_series()
        for labels, series in self._series:
            counts, total = series.snapshot()
            family.add_metric(labels, cumulative_buckets(series.bounds, counts), total)
            if created:
                label_set = dict(zip(self._labelnames, labels, strict=True))
                family.add_sample(f"{self._name}_created", label_set, series.created)
        yield family


def cumulative_buckets(bounds: Sequence[float], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le``, cumulative count) from per-bucket counts."""
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound, count in zip((*map(floatToGoString, bounds), "+Inf"), counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets


def _created_series() -> bool:
    """Whether ``*_created`` samples are exported: prometheus_client's own switch."""
    disabled = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower()
    return disabled not in ("true", "1", "t")
