"""The delivery worker.

One loop owns the worker's writes. Each cycle is one transaction: it records
the outcomes of the attempts that finished since the last cycle and claims due
deliveries (with their events) for the slots that are free, including the
heads those outcomes just freed. A task per free slot sends a delivery's
request and queues its outcome for the next cycle. For a healthy subscription
a cycle also claims several ``max_in_flight`` more than it can start
(``claim_ahead``): they wait, leased, in the worker, and the task of a
successful attempt goes on with the next one at once, so requests keep
flowing while a cycle is at the database. The loop
is woken by finishing attempts and by commits elsewhere, with polling as the
fallback. Limits per subscription (``max_in_flight``, ``rate_limit_per_second``,
the circuit's single probe) hold within this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app import __version__
from app.domain import webhook
from app.domain.circuit import (
    CLOSED,
    CircuitPolicy,
    CircuitState,
    after_failures,
    after_success,
    is_half_open,
)
from app.domain.events import rfc3339
from app.domain.ids import new_id
from app.domain.retry import GiveUp, Retry, Succeeded, decide
from app.domain.signing import secret_key
from app.metrics import Metrics
from app.settings import Settings
from app.store import deliveries as store
from app.store import subscriptions as subscription_store
from app.store.database import Database
from app.store.deliveries import Claimed, ClaimRequest, Completion, Work
from app.store.events import StoredEvent
from app.store.notify import CHANGED, Listener
from app.store.subscriptions import CircuitUpdate, Subscription
from app.worker.limits import TokenBucket
from app.worker.retention import RetentionJob
from app.worker.sender import HttpSender, SendResult

log = logging.getLogger(__name__)

USER_AGENT = f"eventrelay/{__version__}"
SUBSCRIPTION_CACHE_SECONDS = 1.0
UNKNOWN_SUBSCRIPTION_PROBE = 8


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


@dataclass(frozen=True, slots=True)
class _Ready:
    """A claimed delivery waiting in the worker for a free slot."""

    delivery: Claimed
    event: StoredEvent
    payload: bytes


@dataclass(slots=True)
class _Line:
    """What the worker knows about one subscription while it delivers for it."""

    subscription: Subscription
    loaded_at: float
    in_flight: int = 0
    bucket: TokenBucket | None = None
    circuit: CircuitState = CLOSED
    keys: list[bytes] = field(default_factory=list)
    keys_until: datetime | None = None  # when the previous secret stops signing
    # Claimed ahead, waiting for a slot (only while the subscription is healthy).
    waiting: deque[_Ready] = field(default_factory=deque)

    def prefetches(self) -> bool:
        """Whether deliveries may be claimed ahead of a free slot: not when a
        limit other than ``max_in_flight`` could hold them, nor while failing."""
        return (
            self.subscription.status == "active"
            and self.bucket is None
            and self.circuit.consecutive_failures == 0
        )


class DeliveryWorker:
    def __init__(self, db: Database, config: WorkerConfig, metrics: Metrics) -> None:
        self._db = db
        self._config = config
        self._metrics = metrics
        self.owner = f"{os.getpid()}-{new_id('dlv')[-10:]}"
        self._wakeup = asyncio.Event()
        # Set by outside wake-ups and timeouts: claim even when every known
        # subscription is at its limit, for subscriptions not met yet.
        self._probe = True
        self._stopping = False
        self._subs: dict[str, _Line] = {}
        self._tasks: dict[int, tuple[asyncio.Task[None], Claimed]] = {}
        self._finished: list[Completion] = []  # outcomes the next cycle writes
        self._waiting = 0  # claimed ahead, in the lines' ``waiting`` queues
        self._succeeded = 0  # successful attempts not yet counted in the metrics
        self._to_release: list[int] = []  # claims to give back in the next cycle
        self._sender: HttpSender | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        metrics.in_flight.set_function(lambda: len(self._tasks))  # read when scraped
        self._retention = RetentionJob(
            db,
            keep=config.retention,
            keys_ttl=config.idempotency_ttl,
            interval_seconds=config.retention_interval_seconds,
        )

    def wake(self) -> None:
        self._probe = True
        self._wakeup.set()

    def subscription_changed(self, subscription_id: str) -> None:
        """Forget what this worker knows of a subscription's settings (not its counters)."""
        line = self._subs.get(subscription_id)
        if line is not None:
            line.loaded_at = 0.0
        self.wake()

    def _notified(self, payload: str) -> None:
        if payload.startswith(CHANGED):
            self.subscription_changed(payload[len(CHANGED) :])
        else:
            self.wake()

    async def start(self) -> None:
        if self._db.is_sqlite:
            # One worker process per SQLite file: anything in flight is an orphan.
            await store.release_all_leases(self._db)
        self._sender = HttpSender(
            allow_private=self._config.allow_private_targets,
            max_connections=self._config.concurrency,
        )
        if not self._db.is_sqlite:
            self._listener = Listener(self._db.url, self._notified)
            self._listener.start()
        self._loop_task = asyncio.create_task(self._run(), name="delivery-loop")
        self._reaper_task = asyncio.create_task(self._keep_leases(), name="leases")
        self._retention.start()
        log.info("delivery worker started", extra={"worker": self.owner})

    async def stop(self) -> None:
        """Stop claiming, let in-flight attempts finish within the grace period,
        write their outcomes, give back what did not finish."""
        self._stopping = True
        self.wake()
        if self._reaper_task is not None:
            self._reaper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper_task
        await self._retention.stop()
        if self._listener is not None:
            await self._listener.stop()
        running = dict(self._tasks.values())
        leftovers: list[int] = []
        if running:
            _, late = await asyncio.wait(running, timeout=self._config.grace_seconds)
            leftovers = [running[task].seq for task in late]
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._loop_task is not None:
            # With nothing running the loop writes what is queued and returns.
            self.wake()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for line in self._subs.values():
            self._drop_waiting(line)
        leftovers += self._to_release
        with contextlib.suppress(Exception):
            await store.release(self._db, self.owner, leftovers)
        if self._sender is not None:
            await self._sender.close()
        log.info("delivery worker stopped", extra={"worker": self.owner})

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            if self._stopping and not self._finished and not self._tasks:
                return
            await self._gather_outcomes()
            try:
                claimed, limit = await self._cycle()
            except Exception:
                log.exception("writing outcomes or claiming deliveries failed; retrying shortly")
                claimed, limit = 0, 1
            if self._finished or (claimed and claimed >= limit):
                continue
            timeout = await self._idle_timeout()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                self._probe = True

    async def _gather_outcomes(self) -> None:
        """Before writing a few outcomes, give the attempts still running a moment to
        finish too: until a quarter of them have, or the linger is over."""
        if self._probe or self._stopping or not self._finished or not self._tasks:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.cycle_linger_seconds
        enough = max(4, (len(self._finished) + len(self._tasks)) // 4)
        while len(self._finished) < enough and self._tasks and not self._probe:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _idle_timeout(self) -> float:
        timeout = self._config.poll_seconds
        if self._tasks or self._stopping:
            return timeout  # a finishing attempt wakes the loop
        with contextlib.suppress(Exception):
            due = await store.next_due(self._db)
            # Due now yet unclaimed means held (paused, circuit open, at a limit):
            # a completion or a commit will wake us, so do not spin.
            if due is not None and due > datetime.now(UTC):
                timeout = min(timeout, (due - datetime.now(UTC)).total_seconds())
        for line in self._subs.values():
            if line.bucket is not None and line.bucket.available() < 1:
                timeout = min(timeout, line.bucket.seconds_until_token())
        return timeout

    async def _cycle(self) -> tuple[int, int]:
        """Write the finished outcomes and claim for the free slots, in one transaction.
        Returns how many deliveries started and how many were asked for."""
        finished, self._finished = self._finished, []
        if self._succeeded:
            self._metrics.attempt_outcome["success"].inc(self._succeeded)
            self._succeeded = 0
        now = datetime.now(UTC)
        # The circuits first: an outcome that opens one keeps this claim off it.
        updates = self._circuit_updates(finished, now)
        await self._settle_waiting()
        request = None if self._stopping else self._claim_request(now)
        if request is None and not finished:
            return 0, 0
        started = time.perf_counter()
        work = await store.complete_and_claim(self._db, finished, updates, request, now)
        if request is None:
            return 0, 0
        self._metrics.claim_duration.observe(time.perf_counter() - started)
        if not work:
            return 0, request.limit
        self._metrics.claimed.inc(len(work))
        return await self._start(work), request.limit

    def _claim_request(self, now: datetime) -> ClaimRequest | None:
        concurrency = self._config.concurrency
        ahead = self._config.claim_ahead * concurrency
        capacity = concurrency - len(self._tasks) + max(0, ahead - self._waiting)
        if capacity <= 0:
            return None
        # Claim no more than the known subscriptions can start now: what is
        # claimed over a limit has to be given back in another transaction.
        # Subscriptions this worker has not met yet compete in the same claim;
        # when every known one is full, a few are claimed for them, but only
        # after an outside wake-up or a timeout, not after every attempt.
        exclude: list[str] = []
        room = 0
        for sid, line in self._subs.items():
            allowance = self._allowance(line) + self._room_ahead(line)
            if allowance > 0:
                room += allowance
            else:
                exclude.append(sid)
        if room <= 0:
            if not self._probe:
                return None
            room = UNKNOWN_SUBSCRIPTION_PROBE
        self._probe = False
        limit = min(capacity, self._config.claim_batch, room)
        return ClaimRequest(self.owner, now, now + self._config.lease, limit, exclude)

    async def _start(self, work: list[Work]) -> int:
        """Start a task for each claimed delivery a slot allows now, keep the next
        ones of a healthy subscription waiting, give back the rest."""
        await self._refresh_subscriptions({w.delivery.subscription_id for w in work})
        payloads: dict[str, bytes] = {}
        over_limit: list[int] = []
        for w in work:
            delivery, event = w.delivery, w.event
            line = self._subs.get(delivery.subscription_id)
            can_start = line is not None and self._can_start() and self._take_slot(line)
            if line is None or not (can_start or self._room_ahead(line) > 0):
                over_limit.append(delivery.seq)
                continue
            payload = payloads.get(event.id)
            if payload is None:
                payload = payloads[event.id] = _payload(event)
            if can_start:
                self._launch(line, delivery, event, payload)
            else:
                line.waiting.append(_Ready(delivery, event, payload))
                self._waiting += 1
        if over_limit:
            await store.release(self._db, self.owner, over_limit)
        return len(work) - len(over_limit)

    def _launch(self, line: _Line, delivery: Claimed, event: StoredEvent, payload: bytes) -> None:
        task = asyncio.create_task(self._deliver(delivery, line, event, payload))
        self._tasks[delivery.seq] = (task, delivery)

    def _can_start(self) -> bool:
        return len(self._tasks) < self._config.concurrency

    def _room_ahead(self, line: _Line) -> int:
        """How many more deliveries ``line`` may hold waiting for a slot."""
        if not line.prefetches():
            return 0
        ahead = self._config.claim_ahead
        room = ahead * line.subscription.max_in_flight - len(line.waiting)
        return min(room, ahead * self._config.concurrency - self._waiting)

    def _start_waiting(self, line: _Line) -> None:
        while line.waiting and self._can_start() and self._take_slot(line):
            ready = self._pop_waiting(line)
            self._launch(line, ready.delivery, ready.event, ready.payload)

    def _pop_waiting(self, line: _Line) -> _Ready:
        self._waiting -= 1
        return line.waiting.popleft()

    def _drop_waiting(self, line: _Line) -> None:
        """Give back what ``line`` holds waiting (in the next cycle)."""
        self._to_release.extend(ready.delivery.seq for ready in line.waiting)
        self._waiting -= len(line.waiting)
        line.waiting.clear()

    async def _settle_waiting(self) -> None:
        """Before a claim: start what the free slots allow, and give back what a
        subscription that is failing, limited, paused or gone holds waiting."""
        held = [line for line in self._subs.values() if line.waiting]
        if held:
            await self._refresh_subscriptions({line.subscription.id for line in held})
        for line in held:
            if self._stopping or not line.prefetches():
                self._drop_waiting(line)
            else:
                self._start_waiting(line)
        if self._to_release:
            seqs, self._to_release = self._to_release, []
            await store.release(self._db, self.owner, seqs)

    def _allowance(self, line: _Line) -> int:
        sub = line.subscription
        slots = sub.max_in_flight - line.in_flight
        if is_half_open(line.circuit.consecutive_failures, self._config.circuit):
            slots = min(slots, 1 - line.in_flight)
        if line.bucket is not None:
            slots = min(slots, line.bucket.available())
        return slots

    def _take_slot(self, line: _Line) -> bool:
        if self._allowance(line) <= 0:
            return False
        if line.bucket is not None and not line.bucket.take():
            return False
        line.in_flight += 1
        return True

    async def _refresh_subscriptions(self, ids: set[str]) -> None:
        now = time.monotonic()
        # A change made through the API marks the entry stale at once (in this
        # process directly, in others by NOTIFY on PostgreSQL); the age limit
        # covers a separate worker on SQLite.
        stale = {i for i in ids if i not in self._subs}
        stale |= {
            i for i, line in self._subs.items() if now - line.loaded_at > SUBSCRIPTION_CACHE_SECONDS
        }
        if not stale:
            return
        fresh = await subscription_store.get_many(self._db, stale)
        for sid in stale:
            sub = fresh.get(sid)
            line = self._subs.get(sid)
            if sub is None:
                if line is not None:
                    self._drop_waiting(line)
                    if line.in_flight == 0:
                        del self._subs[sid]
                continue
            if line is None:
                self._subs[sid] = line = _Line(sub, now)
                line.circuit = CircuitState(
                    sub.consecutive_failures, sub.failing_since, sub.circuit_open_until
                )
            line.subscription, line.loaded_at = sub, now
            line.keys, line.keys_until = _signing_keys(sub, datetime.now(UTC))
            rate = sub.rate_limit_per_second
            if rate is None:
                line.bucket = None
            elif line.bucket is None or line.bucket.rate != rate:
                line.bucket = TokenBucket(rate)

    # -- one delivery ---------------------------------------------------------

    async def _deliver(
        self, delivery: Claimed, line: _Line, event: StoredEvent, payload: bytes
    ) -> None:
        """Send ``delivery``; while attempts succeed, go on in the same task and
        slot with the deliveries waiting for this subscription, without a trip to
        the database (after a failure the cycle decides: the circuit may hold
        the rest)."""
        task = asyncio.current_task()
        assert task is not None
        succeeded = False
        try:
            while True:
                succeeded = await self._deliver_one(delivery, line, event, payload)
                self._tasks.pop(delivery.seq, None)
                ready = self._next_waiting(line) if succeeded and not self._stopping else None
                if ready is None:
                    return
                delivery, event, payload = ready.delivery, ready.event, ready.payload
                self._tasks[delivery.seq] = (task, delivery)
                self._wakeup.set()  # an outcome to write
        finally:
            self._tasks.pop(delivery.seq, None)
            line.in_flight -= 1
            if succeeded and not self._stopping:
                self._start_waiting(line)
            self._wakeup.set()

    async def _deliver_one(
        self, delivery: Claimed, line: _Line, event: StoredEvent, payload: bytes
    ) -> bool:
        """One attempt; queues its outcome and says whether it succeeded."""
        try:
            result, started = await self._attempt(line, event, payload)
            completion = self._conclude(delivery, line, event, result, started)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "delivery attempt failed unexpectedly",
                extra={"delivery_id": delivery.id, "event_id": delivery.event_id},
            )
            return False
        self._finished.append(completion)
        return completion.status == "succeeded"

    def _next_waiting(self, line: _Line) -> _Ready | None:
        """The next delivery waiting for ``line``, for a slot ``line`` already holds."""
        if not line.waiting or line.in_flight > line.subscription.max_in_flight:
            return None
        return self._pop_waiting(line)

    async def _attempt(
        self, line: _Line, event: StoredEvent, payload: bytes
    ) -> tuple[SendResult, datetime]:
        assert self._sender is not None
        sub = line.subscription
        started = datetime.now(UTC)
        if line.keys_until is not None and started >= line.keys_until:
            line.keys, line.keys_until = _signing_keys(sub, started)
        headers = webhook.headers(
            event_id=event.id,
            timestamp=int(started.timestamp()),
            payload=payload,
            keys=line.keys,
            user_agent=USER_AGENT,
            custom=sub.headers,
        )
        timeout_ms = sub.timeout_ms or self._config.timeout_ms
        result = await self._sender.send(sub.url, payload, headers, timeout_ms / 1000)
        self._metrics.attempt_duration.observe(result.duration_ms / 1000)
        return result, started

    def _conclude(
        self,
        delivery: Claimed,
        line: _Line,
        event: StoredEvent,
        result: SendResult,
        started: datetime,
    ) -> Completion:
        sub = line.subscription
        now = datetime.now(UTC)
        schedule = (
            sub.retry_schedule if sub.retry_schedule is not None else self._config.retry_schedule
        )
        decision = decide(delivery.round_attempts + 1, result.outcome, schedule, now)
        if isinstance(decision, Succeeded):
            status, next_at = "succeeded", None
            self._succeeded += 1  # counted once per cycle
            self._metrics.latency.observe((now - event.received_at).total_seconds())
            if log.isEnabledFor(logging.DEBUG):
                log.debug("delivered", extra=_context(delivery, result))
        elif isinstance(decision, Retry):
            status, next_at = "pending", decision.at
            self._metrics.attempt_outcome["retry"].inc()
            context = _context(delivery, result) | {"error": result.outcome.error}
            log.info("attempt failed; will retry", extra=context)
        else:
            status, next_at = "dead", None
            self._metrics.attempt_outcome["dead_letter"].inc()
            log.warning("dead-lettered: %s", decision.reason, extra=_context(delivery, result))
        return Completion(
            delivery=delivery,
            owner=self.owner,
            status=status,
            started_at=started,
            duration_ms=result.duration_ms,
            status_code=result.outcome.status_code,
            error=result.outcome.error,
            response_body=result.response_body,
            next_attempt_at=next_at,
            finished_at=now,
            summary=_summary(result, decision),
        )

    # -- writing outcomes back -------------------------------------------------

    def _circuit_updates(
        self, completions: Sequence[Completion], now: datetime
    ) -> list[CircuitUpdate]:
        changed: dict[str, CircuitUpdate] = {}
        for c in completions:
            sid = c.delivery.subscription_id
            line = self._subs.get(sid)
            if line is None:
                continue
            before = line.circuit
            gone = c.status == "dead" and c.status_code == 410
            if c.status == "succeeded":
                line.circuit = after_success()
            else:
                line.circuit = after_failures(before, 1, now, self._config.circuit)
            if (line.circuit is not before and line.circuit != before) or gone:
                reason = "gone" if gone else ("failing" if line.circuit.disable else None)
                changed[sid] = CircuitUpdate(
                    sid,
                    line.circuit.consecutive_failures,
                    line.circuit.failing_since,
                    line.circuit.open_until,
                    reason,
                )
        return list(changed.values())

    async def _keep_leases(self) -> None:
        """Renew our claims and take back the claims of workers that died."""
        interval = self._config.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            now = datetime.now(UTC)
            try:
                # Running attempts, deliveries waiting for a slot and outcomes
                # not yet written; a dropped outcome's claim is left to expire.
                held = [*self._tasks, *(c.delivery.seq for c in self._finished)]
                held += [r.delivery.seq for line in self._subs.values() for r in line.waiting]
                await store.renew_leases(self._db, self.owner, held, now + self._config.lease)
                if await store.reap_expired_leases(self._db, now):
                    self.wake()
            except Exception:
                log.exception("keeping leases failed")


def _context(delivery: Claimed, result: SendResult) -> dict[str, object]:
    return {
        "delivery_id": delivery.id,
        "event_id": delivery.event_id,
        "subscription_id": delivery.subscription_id,
        "attempt": delivery.attempts + 1,
        "status_code": result.outcome.status_code,
    }


def _payload(event: StoredEvent) -> bytes:
    return webhook.body(
        event.id,
        event.type,
        rfc3339(event.received_at) or "",
        event.key,
        event.schema_version,
        event.data_json,
    )


def _signing_keys(sub: Subscription, now: datetime) -> tuple[list[bytes], datetime | None]:
    """The keys that sign now, and when that changes (the previous secret expires)."""
    keys = [secret_key(sub.secret)]
    expires = sub.previous_secret_expires_at
    if sub.previous_secret and expires is not None and expires > now:
        keys.append(secret_key(sub.previous_secret))
        return keys, expires
    return keys, None


def _summary(result: SendResult, decision: Succeeded | Retry | GiveUp) -> str | None:
    """What went wrong, for the delivery's ``last_error`` (None on success)."""
    if isinstance(decision, Succeeded):
        return None
    outcome = result.outcome
    problem = outcome.error or f"HTTP {outcome.status_code}"
    if isinstance(decision, GiveUp):
        return f"{decision.reason}; last: {problem}"
    return problem


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
