"""The delivery loop: each cycle completes and claims through the store.

One loop owns the worker's writes. Each cycle (one transaction, or on
PostgreSQL two when outcomes left their lines: app.store.deliveries) records
the outcomes of the attempts that finished since the last cycle and claims due
deliveries (with their events) for the slots that are free, including the
heads those outcomes just freed. The line policy (:mod:`app.worker.lines`)
decides which claimed delivery starts, waits for a slot or goes back; a task
per started delivery runs the attempt step (:mod:`app.worker.attempt`), queues
its outcome for the next cycle and goes on with the next delivery the policy
gives its slot, so requests keep flowing while a cycle is at the database. The
loop is woken by finishing attempts, by commits elsewhere and when a retry it
wrote falls due, with polling as the fallback; beside it run the lease
keeper, the reads that keep the subscriptions in use fresh, the retention job
and the parking of held subscriptions' backlogs.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
from datetime import UTC, datetime, timedelta

from app.domain import formats
from app.domain.ids import new_id
from app.metrics import Metrics
from app.precedence import RequestsFirst
from app.store import deliveries as store
from app.store import leases
from app.store import subscriptions as subscription_store
from app.store.database import Database
from app.store.doorbell import DoorbellListener
from app.store.notify import CHANGED, Listener
from app.store.subscriptions import CircuitUpdate
from app.store.work import Claimed, ClaimRequest, Completion, Work
from app.tracing import Tracer
from app.worker.attempt import AttemptStep, payload
from app.worker.circuits import CircuitBook, may_report
from app.worker.claiming import claim_request, probe_saw_everything
from app.worker.config import WorkerConfig, worker_config
from app.worker.destinations import destination_senders
from app.worker.lines import REFRESH_AHEAD_SECONDS, Line, LinePolicy, Ready, runs_of
from app.worker.protocol import Sender, SenderFactory
from app.worker.retention import ParkingJob, RetentionJob, StatisticsJob
from app.worker.tenant_removal import TenantRemoval

__all__ = ["DeliveryWorker", "WorkerConfig", "worker_config"]

log = logging.getLogger(__name__)

# The most outcomes one cycle writes on SQLite (the rest go in the next, at
# once): its transaction holds the one writer, and ingest waits for it. On
# PostgreSQL a cap only let the outcomes fall behind a busy worker.
OUTCOMES_PER_CYCLE = 256
# The retries the worker wakes for while attempts run (DeliveryWorker._retries):
# those due within the horizon, up to a number; the poll finds the others.
RETRY_HORIZON = timedelta(minutes=1)
RETRY_TIMES = 4096


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        config: WorkerConfig,
        metrics: Metrics,
        senders: SenderFactory | None = None,
        tracer: Tracer | None = None,
        requests_first: RequestsFirst | None = None,
    ) -> None:
        """``requests_first``: an embedded worker's, whose thread steps aside
        for the API's requests in flight (:mod:`app.precedence`)."""
        self._db = db
        self._requests_first = requests_first
        self._tracer = tracer
        self._config = config
        self._metrics = metrics
        self._senders = senders or destination_senders(config)
        self.owner = f"{os.getpid()}-{new_id('dlv')[-10:]}"
        self._wakeup = asyncio.Event()
        # Set by outside wake-ups and timeouts: the next claim also looks for
        # subscriptions not met yet, past the backlogs of the busy ones.
        self._probe = True
        self._probed_at = time.monotonic()
        # Outside wake-ups: a probe at the database when one came may have missed
        # its deliveries, and leaves the next claim probing. Quick: see _cycle.
        self._wakes, self._quick = 0, False
        self._cycled_at = datetime.now(UTC)  # the time the last cycle claimed for
        self._stopping = False
        self._policy = LinePolicy(config.concurrency, config.claim_ahead, config.circuit)
        self._circuits = CircuitBook(self._policy.lines, config.circuit)
        self._tasks: dict[int, tuple[asyncio.Task[None], Claimed]] = {}
        self._finished: list[Completion] = []  # outcomes the next cycle writes
        # When the retries this worker wrote fall due (a heap): while attempts
        # run, the loop sleeps until a finishing one wakes it, and a retry due
        # before then must not wait for the crowding tenant's slow answers.
        self._retries: list[datetime] = []
        self._sender: Sender | None = None
        self._step: AttemptStep | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self._halt = asyncio.Event()  # the warm task's stop: a read under way is not cut short
        self._listener: Listener | DoorbellListener | None = None
        metrics.in_flight.set_function(lambda: len(self._tasks))  # read when scraped
        self._retention = RetentionJob(
            db,
            keep=config.retention,
            keys_ttl=config.idempotency_ttl,
            interval_seconds=config.retention_interval_seconds,
        )
        self._statistics = StatisticsJob(db)
        self._removal = TenantRemoval(db)
        self._parking = ParkingJob(db, unparked=self.wake)

    def wake(self) -> None:
        self._wakes += 1
        self._probe = True
        self._wakeup.set()

    def remove_tenants(self) -> None:
        """A tenant was deleted: remove its rows now rather than at the next poll."""
        self._removal.wake()

    def subscription_changed(self, subscription_id: str) -> None:
        """Forget what this worker knows of a subscription's settings (not its counters)."""
        self._policy.mark_stale(subscription_id, time.monotonic())
        self._parking.wake()  # resumed: its parked deliveries are claimable at once
        self.wake()

    def _notified(self, payload: str) -> None:
        if payload.startswith(CHANGED):
            self.subscription_changed(payload[len(CHANGED) :])
        else:
            self.wake()

    async def start(self) -> None:
        if self._db.is_sqlite:
            # One worker process per SQLite file: anything in flight is an orphan.
            await leases.release_all_leases(self._db)
        self._sender = self._senders()
        self._step = AttemptStep(
            self._sender,
            self._metrics,
            owner=self.owner,
            retry_schedule=self._config.retry_schedule,
            timeout_ms=self._config.timeout_ms,
            tracer=self._tracer,
        )
        # Woken by other processes' commits: PostgreSQL's NOTIFY, or on SQLite
        # the doorbell an API process on the same file rings.
        listener = DoorbellListener if self._db.is_sqlite else Listener
        self._listener = listener(self._db.url, self._notified)
        self._listener.start()
        self._loop_task = asyncio.create_task(self._run(), name="delivery-loop")
        self._reaper_task = asyncio.create_task(self._keep_leases(), name="leases")
        self._halt.clear()
        self._warm_task = asyncio.create_task(self._keep_subscriptions_warm(), name="warm")
        self._retention.start()
        self._statistics.start()
        self._removal.start()
        self._parking.start()
        log.info("delivery worker started", extra={"worker": self.owner})

    async def stop(self) -> None:
        """Stop claiming, let in-flight attempts finish within the grace period,
        write their outcomes, give back what did not finish."""
        self._stopping = True
        self.wake()
        self._halt.set()
        if self._warm_task is not None:
            await self._warm_task
        if self._reaper_task is not None:
            self._reaper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper_task
        await self._retention.stop()
        await self._statistics.stop()
        await self._removal.stop()
        await self._parking.stop()
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
        for line in self._policy.lines.values():
            self._policy.drop_waiting(line)
        leftovers += self._policy.released()
        with contextlib.suppress(Exception):
            await leases.release(self._db, self.owner, leftovers)
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
            self._step_aside()
            try:
                claimed, limit = await self._cycle()
            except Exception:
                log.exception("writing outcomes or claiming deliveries failed; retrying shortly")
                claimed, limit = 0, 1
            if self._finished or self._quick or (claimed and claimed >= limit):
                continue
            timeout, for_retry = await self._idle_timeout()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                # A retry's time needs no probe: it is this worker's own line,
                # and a plain claim takes it (or the fresh walk, if another
                # tenant crowds).
                self._probe = self._probe or not for_retry

    def stop_stepping_aside(self) -> None:
        """Any thread: new work came (an ingest's commit); a wait for the API's
        requests under way ends now, and the claim for it goes at once."""
        if self._requests_first is not None:
            self._requests_first.woken()

    def _step_aside(self) -> None:
        """Let the API's requests in flight go first (:mod:`app.precedence`):
        before a cycle and before a slot's next attempt (a slot's first attempt
        follows the cycle that claimed it), unless a write transaction of this
        worker is open or waiting for its turn, which an ingest could be
        waiting for in turn (SQLite's writer, PostgreSQL's line locks). A
        wake-up for new work ends the wait (:meth:`RequestsFirst.woken`)."""
        first = self._requests_first
        if first is not None and first.in_flight and not self._db.writes:
            waited = first.step_aside()
            if waited:
                self._metrics.stepped_aside.inc(waited)

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

    async def _idle_timeout(self) -> tuple[float, bool]:
        """How long the loop may sleep, and whether it wakes then for a retry
        it wrote rather than for its poll."""
        timeout = self._config.poll_seconds
        if self._stopping:
            return timeout, False
        if self._tasks:
            # A finishing attempt wakes the loop, and the retries this worker
            # wrote fall due on time, however slowly those attempts answer.
            retry = self._next_retry()
            if retry is None:
                return timeout, False
            wait = max(0.0, (retry - datetime.now(UTC)).total_seconds())
            return (wait, True) if wait < timeout else (timeout, False)
        with contextlib.suppress(Exception):
            # What fell due by the last cycle and is unclaimed is held (paused,
            # circuit open, at a limit): a completion or a commit wakes us, so do
            # not spin. What fell due since (a retry, while that cycle was at the
            # database) is claimed at once.
            due = await leases.next_due(self._db, after=self._cycled_at)
            if due is not None:
                timeout = min(timeout, max(0.0, (due - datetime.now(UTC)).total_seconds()))
        token = self._policy.seconds_until_token()
        return (timeout if token is None else min(timeout, token)), False

    def _next_retry(self) -> datetime | None:
        """When the next retry this worker wrote falls due, past those the last
        cycle's claim could take."""
        retries = self._retries
        while retries and retries[0] <= self._cycled_at:
            heapq.heappop(retries)
        return retries[0] if retries else None

    def _remember_retries(self, finished: list[Completion], now: datetime) -> None:
        horizon = now + RETRY_HORIZON
        for done in finished:
            due = done.next_attempt_at
            if done.status != "pending" or due is None or due > horizon:
                continue
            if len(self._retries) < RETRY_TIMES:
                heapq.heappush(self._retries, due)

    async def _cycle(self) -> tuple[int, int]:
        """Write the finished outcomes and claim for the free slots (one cycle of the store's).
        Returns how many deliveries started and how many were asked for.

        A probe while a tenant crowds the worker is a claim of its own, before
        the outcomes (*quick*): the other tenants' newest deliveries wait for
        neither. A full cycle follows at once; two quick probes never run in a row."""
        if self._step is not None:
            self._step.count_successes()
        now = self._cycled_at = datetime.now(UTC)
        wakes = self._wakes
        if self._policy.take_ran_out():
            self._probe = True
        probing = self._probe or time.monotonic() - self._probed_at >= self._config.poll_seconds
        request = None
        if probing and not self._quick and not self._stopping:
            await self._settle_waiting()
            request = self._request(now, probing, quick=True)
        self._quick = request is not None
        cap = OUTCOMES_PER_CYCLE if self._db.is_sqlite else len(self._finished)
        finished = [] if self._quick else self._finished[:cap]
        del self._finished[: len(finished)]
        # The circuits first: an outcome that opens one keeps this claim off it.
        updates = self._circuits.record(finished, now)
        if not self._quick:
            await self._settle_waiting()
            if not self._stopping:
                request = self._request(now, probing)
        if request is None and not finished:
            return 0, 0
        started = time.perf_counter()
        work = await self._complete_and_claim(finished, updates, request, now)
        self._remember_retries(finished, now)
        if any(u.change is not None and not u.change.opened for u in updates):
            self._parking.wake()  # a circuit closed: its parked deliveries are claimable
        if may_report(finished, updates):
            # Its operator events' deliveries may be for subscriptions this
            # worker has not met: the next claim probes for them.
            self.wake()
        if request is None:
            return 0, 0
        self._metrics.claim_duration.observe(time.perf_counter() - started)
        if probing and probe_saw_everything(request, work) and self._wakes == wakes:
            self._probe, self._probed_at = False, time.monotonic()
        if not work:
            return 0, request.limit
        self._metrics.claimed.inc(len(work))
        return await self._start(work), request.limit

    async def _complete_and_claim(
        self,
        finished: list[Completion],
        updates: list[CircuitUpdate],
        request: ClaimRequest | None,
        now: datetime,
    ) -> list[Work]:
        try:
            return await store.complete_and_claim(self._db, finished, updates, request, now)
        except store.ClaimFailed:
            raise  # the outcomes and circuits are written: nothing to put back
        except Exception:
            # Nothing was written: the outcomes are dropped (their claims expire
            # and the deliveries are attempted again) and the circuits go back.
            self._circuits.rewind()
            raise

    def _request(self, now: datetime, probing: bool, quick: bool = False) -> ClaimRequest | None:
        plan, lease, batch = self._policy.claim_plan(), self._config.lease, self._config.claim_batch
        resumed = self._parking.resumed
        return claim_request(
            plan, self.owner, now, lease, batch, probing, quick=quick, resumed=resumed
        )

    async def _start(self, work: list[Work]) -> int:
        """Start a task for each claimed delivery a slot allows now, keep the next
        ones of a healthy subscription waiting, give back the rest."""
        await self._refresh_subscriptions({w.delivery.subscription_id for w in work})
        payloads: dict[tuple[str, formats.Shape], bytes] = {}
        over_limit: list[int] = []
        policy = self._policy
        runs: list[tuple[Line, Ready, list[Work]]] = []
        for head, run in runs_of(work):
            line = policy.lines.get(head.delivery.subscription_id)
            start = line is not None and policy.take_slot(line)
            if line is None or not (start or policy.room_ahead(line) > 0):
                over_limit += [w.delivery.seq for w in (head, *run)]
                continue
            ready = self._ready(line, head, payloads)
            if start:
                self._launch(line, ready)
            else:
                policy.queue(line, ready)
            if run:
                runs.append((line, ready, run))
        # The runs after every head: a line's run takes only the room its head left.
        for line, ready, run in runs:
            followers = [self._ready(line, w, payloads) for w in run]
            over_limit += policy.attach(line, ready, followers)
        if over_limit:
            await leases.release(self._db, self.owner, over_limit)
        return len(work) - len(over_limit)

    @staticmethod
    def _ready(line: Line, w: Work, payloads: dict[tuple[str, formats.Shape], bytes]) -> Ready:
        """``w`` with its body in ``line``'s format, built once per event and shape."""
        sub = line.subscription
        shape = formats.shape(sub.format, sub.destination_type)
        body = payloads.get((w.event.id, shape))
        if body is None:
            body = payloads[w.event.id, shape] = payload(w.event, shape)
        return Ready(w.delivery, w.event, body)

    def _launch(self, line: Line, ready: Ready) -> None:
        task = asyncio.create_task(self._deliver(line, ready))
        self._tasks[ready.delivery.seq] = (task, ready.delivery)

    async def _settle_waiting(self) -> None:
        """Before a claim: start what the free slots allow, and give back what a
        subscription that is failing, limited, paused or gone holds waiting."""
        queued = self._policy.queued()
        if queued:
            await self._refresh_subscriptions(queued)
        for line, ready in self._policy.settle(self._stopping):
            self._launch(line, ready)
        seqs = self._policy.released()
        if seqs:
            await leases.release(self._db, self.owner, seqs)

    async def _refresh_subscriptions(self, ids: set[str]) -> None:
        # A change made through the API marks the entry stale at once (in this
        # process directly, in others by NOTIFY on PostgreSQL); the age limit
        # covers a separate worker on SQLite (and a lost notice). The entries in
        # use are read again before they age out (_keep_subscriptions_warm):
        # this reads what the worker has not met, or what a change left stale.
        now = time.monotonic()
        stale = self._policy.stale(ids, now)
        if stale:
            await self._load_subscriptions(stale, now)

    async def _load_subscriptions(self, ids: set[str], now: float) -> None:
        """Read ``ids`` (the read begun at ``now``) into the line policy."""
        fresh = await subscription_store.get_many(self._db, ids)
        for sid in ids:
            self._policy.load(sid, fresh.get(sid), now)

    # -- the tasks ------------------------------------------------------------

    async def _deliver(self, line: Line, ready: Ready) -> None:
        """Send ``ready``; then go on, in the same task and slot, with whatever
        the policy gives the slot next (this subscription's next waiting delivery
        after a success, or another's that waits for a slot), without a trip to
        the database."""
        task = asyncio.current_task()
        assert task is not None
        holding = True
        policy = self._policy
        try:
            while True:
                done = await self._attempt(line, ready)
                succeeded = done is not None and done.status == "succeeded"
                self._tasks.pop(ready.delivery.seq, None)
                if ready.after:
                    # Its run: the next goes on after a success; after a failure
                    # the rest goes back with the outcome.
                    if succeeded and done is not None and not self._stopping:
                        policy.follow(line, ready, done)
                    elif done is not None:
                        done.returned = policy.take_run(line, ready)
                    else:
                        policy.drop_run(line, ready)
                after = policy.next_after(line, succeeded, self._stopping)
                if after is None:
                    holding = False
                    return
                line, ready = after
                self._tasks[ready.delivery.seq] = (task, ready.delivery)
                self._wakeup.set()  # an outcome to write
                self._step_aside()  # before the slot's next attempt
        finally:
            self._tasks.pop(ready.delivery.seq, None)
            if ready.after:  # cancelled while stopping: its run goes back
                policy.drop_run(line, ready)
            if holding:
                self._policy.free_slot(line)
            if not self._stopping:
                for waiting_line, waiting in self._policy.start_waiting():
                    self._launch(waiting_line, waiting)
            self._wakeup.set()

    async def _attempt(self, line: Line, ready: Ready) -> Completion | None:
        """One attempt; queues its outcome and returns it (None: it has none)."""
        assert self._step is not None
        delivery = ready.delivery
        try:
            completion = await self._step.run(line, delivery, ready.event, ready.payload)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "delivery attempt failed unexpectedly",
                extra={"delivery_id": delivery.id, "event_id": delivery.event_id},
            )
            return None
        self._finished.append(completion)
        return completion

    async def _keep_subscriptions_warm(self) -> None:
        """Read the subscriptions in use again before they go stale, beside the
        loop: the delivery that comes next does not wait for its read."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), REFRESH_AHEAD_SECONDS)
                return
            now = time.monotonic()
            ids = self._policy.warming(now)
            if not ids:
                continue
            try:
                await self._load_subscriptions(ids, now)
            except Exception:
                log.exception("reading subscriptions again failed")

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
                held += [seq for c in self._finished for seq in c.returned]
                held += self._policy.held()
                await leases.renew_leases(self._db, self.owner, held, now + self._config.lease)
                if await leases.reap_expired_leases(self._db, now):
                    self.wake()
            except Exception:
                log.exception("keeping leases failed")
