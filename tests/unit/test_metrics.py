"""The delivery histograms kept as plain numbers export what prometheus_client's
``Histogram`` exports for the same observations. No I/O."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from app.metrics import DESTINATION_TYPES, DURATION_BUCKETS, LATENCY_BUCKETS, Metrics

# Observations on every side of the bounds: below the first, on one, between
# two, past the last (+Inf).
DURATIONS = {
    "webhook": [0.0005, 0.001, 0.003, 0.003, 0.7, 31.0],
    "rabbitmq": [0.002, 0.0025],
    "redis": [12.0],
}
LATENCIES = [0.001, 0.005, 0.3, 2.0, 100.0, 99999.0]


def _without_created(lines: list[str]) -> list[str]:
    return [line for line in lines if "_created" not in line]


def _created(lines: list[str]) -> list[str]:
    """The ``*_created`` lines without their values (the times differ)."""
    return [line.rsplit(" ", 1)[0] for line in lines if "_created" in line]


def _ours() -> str:
    metrics = Metrics()
    for kind, values in DURATIONS.items():
        for value in values:
            metrics.destination_duration[kind].observe(value)
    for value in LATENCIES:
        metrics.latency.observe(value)
    return generate_latest(metrics.registry).decode()


def _prometheus_clients() -> str:
    """The same families as prometheus_client's histograms, in Metrics' order."""
    registry = CollectorRegistry(auto_describe=True)
    total = Histogram(
        "eventrelay_delivery_attempt_duration_seconds",
        "Duration of one webhook request.",
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    by_destination = Histogram(
        "eventrelay_destination_attempt_duration_seconds",
        "Duration of one delivery attempt, by destination type.",
        ["destination"],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    latency = Histogram(
        "eventrelay_delivery_latency_seconds",
        "From ingest to successful delivery.",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for kind in DESTINATION_TYPES:
        by_destination.labels(kind)
    for kind, values in DURATIONS.items():
        for value in values:
            total.observe(value)
            by_destination.labels(kind).observe(value)
    for value in LATENCIES:
        latency.observe(value)
    return generate_latest(registry).decode()


def _histogram_lines(text: str, names: tuple[str, ...]) -> list[str]:
    """The lines of ``names``' families (comments, samples and ``*_created``)."""
    kept = []
    for line in text.splitlines():
        name = line.split()[2] if line.startswith("#") else re.split(r"[{ ]", line, maxsplit=1)[0]
        if name.startswith(names):
            kept.append(line)
    return kept


NAMES = (
    "eventrelay_delivery_attempt_duration_seconds",
    "eventrelay_destination_attempt_duration_seconds",
    "eventrelay_delivery_latency_seconds",
)


def test_the_same_series_buckets_counts_and_sums_as_prometheus_clients_histogram() -> None:
    ours = _histogram_lines(_ours(), NAMES)
    theirs = _histogram_lines(_prometheus_clients(), NAMES)

    assert _without_created(ours) == _without_created(theirs)
    # The totals are the sum over the destination types.
    assert "eventrelay_delivery_attempt_duration_seconds_count 9.0" in ours
    assert 'eventrelay_destination_attempt_duration_seconds_count{destination="nats"} 0.0' in ours
    # One *_created sample per series, as prometheus_client exports them.
    assert _created(ours) == _created(theirs)


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    assert _created(_histogram_lines(_ours(), NAMES)) == []


def test_a_family_name_is_still_registered_once() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("eventrelay_delivery_latency_seconds", "again", registry=metrics.registry)
