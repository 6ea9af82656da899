"""The console's overview: how the tenant is doing right now, and the health
of its subscriptions.

Every figure is read within a bound, whatever the history holds: counts stop
at a cap (shown as "10,000+"), the success share is taken over the tenant's
latest attempts (a fixed window at its latest events), and only the
subscriptions shown are counted. The delivery lag is measured as
``eventrelay_delivery_lag_seconds`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from app.domain.circuit import CircuitPolicy, is_half_open
from app.domain.counts import Count
from app.store import gauges
from app.store import overview as store
from app.store.database import Database
from app.store.gauges import SubscriptionHealth
from app.store.subscriptions import Subscription

MINUTES = 5
LATEST_ATTEMPTS = 1000  # the tenant's latest attempts the share is taken over,
LATEST_EVENTS = 1000  # at its latest events
COUNT_CAP = 10_000  # the tenant's pending deliveries, dead letters, events a minute
SUBSCRIPTION_CAP = 1_000  # each subscription's pending deliveries and dead letters


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    id: str
    status: str
    consecutive_failures: int
    circuit: str  # closed / open / half-open
    pending: Count
    dead: Count

    @property
    def failing(self) -> bool:
        return self.circuit != "closed" or self.consecutive_failures > 0


@dataclass(frozen=True, slots=True)
class Overview:
    events_per_minute: list[Count]  # oldest minute first
    attempts_counted: int  # the tenant's latest attempts, up to LATEST_ATTEMPTS
    attempts_succeeded: int
    delivery_lag_seconds: float
    dlq_size: Count
    pending: Count
    failing: list[SubscriptionState]

    @property
    def success_share(self) -> float | None:
        if not self.attempts_counted:
            return None
        return self.attempts_succeeded / self.attempts_counted


class OverviewService:
    def __init__(self, db: Database, circuit: CircuitPolicy) -> None:
        self._db = db
        self._circuit = circuit

    async def overview(self, tenant_id: str) -> Overview:
        """The tenant's figures; the delivery lag is the installation's (the
        worker's), as the gauge reports it."""
        now = datetime.now(UTC)
        failing = await store.failing_subscriptions(self._db, tenant_id, now)
        per_minute = await store.events_per_minute(self._db, tenant_id, now, MINUTES, COUNT_CAP)
        counted, succeeded = await store.attempt_outcomes(
            self._db, tenant_id, LATEST_ATTEMPTS, LATEST_EVENTS
        )
        pending, dead = await store.tenant_backlog(self._db, tenant_id, COUNT_CAP)
        due = await gauges.oldest_due(self._db)
        return Overview(
            events_per_minute=[Count(n, COUNT_CAP) for n in per_minute],
            attempts_counted=counted,
            attempts_succeeded=succeeded,
            delivery_lag_seconds=max(0.0, (now - due).total_seconds()) if due else 0.0,
            dlq_size=Count(dead, COUNT_CAP),
            pending=Count(pending, COUNT_CAP),
            failing=sorted((await self._states(failing, now)).values(), key=lambda state: state.id),
        )

    async def subscription_states(
        self, subscriptions: Sequence[Subscription]
    ) -> dict[str, SubscriptionState]:
        """The health of these subscriptions (a page of them), by ID."""
        health = [
            SubscriptionHealth(
                sub.id, sub.tenant_id, sub.status, sub.consecutive_failures, sub.circuit_open_until
            )
            for sub in subscriptions
        ]
        return await self._states(health, datetime.now(UTC))

    async def _states(
        self, health: Sequence[SubscriptionHealth], now: datetime
    ) -> dict[str, SubscriptionState]:
        backlogs = await store.subscription_backlogs(
            self._db, [h.id for h in health], SUBSCRIPTION_CAP
        )
        return {
            h.id: SubscriptionState(
                h.id,
                h.status,
                h.consecutive_failures,
                self._circuit_state(h.circuit_open_until, h.consecutive_failures, now),
                Count(backlogs[h.id][0], SUBSCRIPTION_CAP),
                Count(backlogs[h.id][1], SUBSCRIPTION_CAP),
            )
            for h in health
        }

    def _circuit_state(self, open_until: datetime | None, failures: int, now: datetime) -> str:
        """As the ``eventrelay_subscription_circuit_state`` gauge says it."""
        if open_until is not None and open_until > now:
            return "open"
        return "half-open" if is_half_open(failures, self._circuit) else "closed"
