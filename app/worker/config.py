"""The delivery worker's settings, and how they come from :class:`app.settings.Settings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from app.domain.circuit import CircuitPolicy
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    retry_schedule: tuple[float, ...]
    timeout_ms: int
    allow_private_targets: bool
    concurrency: int = 256
    claim_batch: int = 512
    # A healthy subscription's deliveries claimed ahead of a free slot, in
    # multiples of its max_in_flight: they start the moment a slot frees, so
    # requests keep flowing while a cycle is at the database.
    claim_ahead: int = 8
    poll_seconds: float = 0.5
    # A claim lasts this long and is renewed every third of it while the attempt
    # runs, so a dead worker's claims come back within one lease.
    lease: timedelta = timedelta(seconds=30)
    grace_seconds: float = 10.0
    circuit: CircuitPolicy = field(default_factory=CircuitPolicy)
    retention: timedelta = timedelta(days=7)
    idempotency_ttl: timedelta = timedelta(days=1)
    retention_interval_seconds: float = 60.0
    # A cycle that only has outcomes to write waits up to this long for more
    # attempts to finish while others still run, so that one transaction (a
    # BEGIN … COMMIT, and on SQLite trips to its thread) carries several.
    # Outside wake-ups (new events, changes) never wait.
    cycle_linger_seconds: float = 0.002


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        retry_schedule=settings.retry_schedule,
        timeout_ms=settings.delivery_timeout_ms,
        allow_private_targets=settings.allow_private_targets,
        concurrency=settings.worker_concurrency,
        poll_seconds=settings.worker_poll_seconds,
        lease=timedelta(seconds=settings.lease_seconds),
        grace_seconds=settings.shutdown_grace_seconds,
        circuit=CircuitPolicy(
            failure_threshold=settings.circuit_failure_threshold,
            base_cooldown=timedelta(seconds=settings.circuit_cooldown_seconds),
        ),
        retention=timedelta(days=settings.retention_days),
        idempotency_ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
        retention_interval_seconds=settings.retention_interval_seconds,
    )
