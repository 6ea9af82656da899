"""The console's overview: how the installation is doing right now.

The delivery lag and the per-subscription counts are the ones the gauges
export (``app/store/gauges.py``), so the page and ``/metrics`` agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from app.domain.circuit import CircuitPolicy, is_half_open
from app.store import gauges
from app.store import overview as store
from app.store.database import Database

MINUTES = 5
LATEST_ATTEMPTS = 5000  # the installation's latest attempts the share is taken over


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    id: str
    status: str
    consecutive_failures: int
    circuit: str  # closed / open / half-open
    pending: int
    dead: int

    @property
    def failing(self) -> bool:
        return self.circuit != "closed" or self.consecutive_failures > 0


@dataclass(frozen=True, slots=True)
class Overview:
    events_per_minute: list[int]  # oldest minute first
    attempts_counted: int
    attempts_succeeded: int
    delivery_lag_seconds: float
    dlq_size: int
    pending: int
    subscriptions: list[SubscriptionState]

    @property
    def success_share(self) -> float | None:
        if not self.attempts_counted:
            return None
        return self.attempts_succeeded / self.attempts_counted

    @property
    def failing(self) -> list[SubscriptionState]:
        return [s for s in self.subscriptions if s.failing]


class OverviewService:
    def __init__(self, db: Database, circuit: CircuitPolicy) -> None:
        self._db = db
        self._circuit = circuit

    async def overview(self, tenant_id: str) -> Overview:
        """The tenant's figures; the delivery lag is the installation's (the
        worker's), as the gauge reports it."""
        now = datetime.now(UTC)
        snap = await gauges.snapshot(self._db)
        per_minute = await store.events_per_minute(self._db, tenant_id, now, MINUTES)
        codes = await store.latest_attempt_codes(self._db, tenant_id, LATEST_ATTEMPTS)
        lag = max(0.0, (now - snap.oldest_due).total_seconds()) if snap.oldest_due else 0.0
        states = [
            SubscriptionState(
                s.id,
                s.status,
                s.consecutive_failures,
                self._circuit_state(s.circuit_open_until, s.consecutive_failures, now),
                snap.per_subscription.get((s.id, "pending"), 0),
                snap.per_subscription.get((s.id, "dead"), 0),
            )
            for s in snap.subscriptions
            if s.tenant_id == tenant_id
        ]
        return Overview(
            events_per_minute=per_minute,
            attempts_counted=len(codes),
            attempts_succeeded=sum(1 for c in codes if c is not None and 200 <= c < 300),
            delivery_lag_seconds=lag,
            dlq_size=sum(s.dead for s in states),
            pending=sum(s.pending for s in states),
            subscriptions=sorted(states, key=lambda s: (not s.failing, s.id)),
        )

    async def subscription_states(self, tenant_id: str) -> dict[str, SubscriptionState]:
        return {s.id: s for s in (await self.overview(tenant_id)).subscriptions}

    def _circuit_state(self, open_until: datetime | None, failures: int, now: datetime) -> str:
        """As the ``eventrelay_subscription_circuit_state`` gauge says it."""
        if open_until is not None and open_until > now:
            return "open"
        return "half-open" if is_half_open(failures, self._circuit) else "closed"
