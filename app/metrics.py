"""Prometheus metrics. One registry per app instance; nothing is registered at import."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


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
