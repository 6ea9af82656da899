"""Prometheus metrics. One registry per app instance; nothing is registered at import."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.attempt_duration = Histogram(
            "eventrelay_delivery_attempt_duration_seconds",
            "Duration of one webhook request.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
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
        self.destination_duration_seconds = Histogram(
            "eventrelay_destination_attempt_duration_seconds",
            "Duration of one delivery attempt, by destination type.",
            ["destination"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.destination_duration = {
            kind: self.destination_duration_seconds.labels(kind) for kind in DESTINATION_TYPES
        }
        self.latency = Histogram(
            "eventrelay_delivery_latency_seconds",
            "From ingest to successful delivery.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
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
