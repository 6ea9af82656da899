"""Gauges read from the database, so they are right with any number of processes.

A background task refreshes one snapshot every few seconds; ``/metrics``
renders the last snapshot and never waits on the database. A refresh counts
the unfinished deliveries, so it costs more as a backlog grows: the next one
starts no sooner than ``COST_FACTOR`` times the duration of the quicker of the
last two after it ended, which keeps the refreshes to about 1 / (1 +
``COST_FACTOR``) of the time (1 %) however large the backlog. A refresh over
a deep backlog takes a core for 100-200 ms, and whatever the worker and ingest
were doing on it waited. Every process exports the same values: aggregate them
with ``max`` (not ``sum``) in Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.domain.circuit import CircuitPolicy, is_half_open
from app.store.database import Database
from app.store.gauges import Snapshot, snapshot

log = logging.getLogger(__name__)

# How long shutdown waits for a refresh under way (a SQLite read takes
# milliseconds; a PostgreSQL one stuck on the network is cancelled).
STOP_WAIT_SECONDS = 2.0
# The wait after a refresh is at least this many times the duration of the
# quicker of the last two.
COST_FACTOR = 100.0


class DatabaseGauges(Collector):
    def __init__(
        self, db: Database, *, circuit: CircuitPolicy, interval_seconds: float = 5.0
    ) -> None:
        self._db = db
        self._circuit = circuit
        self._interval = interval_seconds
        # Seconds the last two refreshes took: their cost is the lesser, so that
        # one refresh held up by a busy moment does not put the next far off.
        self.durations = (0.0, 0.0)
        self._snapshot: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="db-gauges")

    async def stop(self) -> None:
        """Stops refreshing. A refresh under way is given ``STOP_WAIT_SECONDS``
        to finish before it is cancelled: cancelled mid-connect, aiosqlite's
        thread would answer into an event loop that may be closed by then."""
        if self._task is not None:
            self._stopping.set()
            await asyncio.wait({self._task}, timeout=STOP_WAIT_SECONDS)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        self._snapshot = await snapshot(self._db)

    def record(self, seconds: float) -> None:
        """How long the refresh that just ended took."""
        self.durations = (self.durations[1], seconds)

    def next_wait(self) -> float:
        """Seconds until the next refresh: the interval, or longer after two
        slow refreshes (``COST_FACTOR`` times the quicker one's duration)."""
        return max(self._interval, COST_FACTOR * min(self.durations))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                await self.refresh()
            except Exception as exc:  # the database may be away; keep the last snapshot
                log.warning("refreshing database gauges failed: %s", exc)
                self.record(0.0)  # a failure (a timeout) says nothing of the cost
            else:
                self.record(loop.time() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.next_wait())

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        if snap is None:
            return
        deliveries = GaugeMetricFamily(
            "eventrelay_deliveries", "Deliveries by status (database-wide).", labels=["status"]
        )
        for status, count in snap.deliveries.items():
            deliveries.add_metric([status], count)
        yield deliveries
        per_sub = GaugeMetricFamily(
            "eventrelay_subscription_deliveries",
            "Deliveries per subscription and status.",
            labels=["subscription_id", "status", "tenant_id"],
        )
        tenant_of = {sub.id: sub.tenant_id for sub in snap.subscriptions}
        for (sid, status), count in sorted(snap.per_subscription.items()):
            per_sub.add_metric([sid, status, tenant_of.get(sid, "")], count)
        yield per_sub
        age = 0.0
        if snap.oldest_pending is not None:
            age = max((datetime.now(UTC) - snap.oldest_pending).total_seconds(), 0.0)
        yield GaugeMetricFamily(
            "eventrelay_oldest_pending_delivery_age_seconds",
            "Age of the oldest pending delivery, including those waiting for a retry, "
            "a paused subscription or a blocked key.",
            value=age,
        )
        wait = 0.0
        if snap.oldest_due is not None:
            wait = max((datetime.now(UTC) - snap.oldest_due).total_seconds(), 0.0)
        yield GaugeMetricFamily(
            "eventrelay_delivery_lag_seconds",
            "How long the longest-waiting claimable delivery has been due: worker lag.",
            value=wait,
        )
        yield from self._subscription_metrics(snap)

    def _subscription_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        now = datetime.now(UTC)
        by_status = GaugeMetricFamily(
            "eventrelay_subscriptions", "Subscriptions by status.", labels=["status"]
        )
        counts = dict.fromkeys(("active", "paused", "disabled"), 0)
        circuit = GaugeMetricFamily(
            "eventrelay_subscription_circuit_state",
            "Circuit per subscription: 0 closed, 1 half-open (one probe), 2 open.",
            labels=["subscription_id", "tenant_id"],
        )
        failures = GaugeMetricFamily(
            "eventrelay_subscription_consecutive_failures",
            "Failed attempts in a row per subscription.",
            labels=["subscription_id", "tenant_id"],
        )
        for sub in snap.subscriptions:
            counts[sub.status] = counts.get(sub.status, 0) + 1
            state = 0
            if sub.circuit_open_until is not None and sub.circuit_open_until > now:
                state = 2
            elif is_half_open(sub.consecutive_failures, self._circuit):
                state = 1
            circuit.add_metric([sub.id, sub.tenant_id], state)
            failures.add_metric([sub.id, sub.tenant_id], sub.consecutive_failures)
        for status, count in counts.items():
            by_status.add_metric([status], count)
        yield by_status
        yield circuit
        yield failures
