"""The line policy: which claimed delivery starts, waits for a slot, or goes back.

A line here is what the worker holds for one subscription: its attempts in
flight, the deliveries claimed ahead for it, its token bucket and its
circuit. The policy shares the worker's slots (``concurrency``) fairly between
tenants first and between a tenant's subscriptions second, so that a slow or
failing subscriber delays only itself and a tenant with many subscriptions
does not crowd out a tenant with one:

- A subscription never has more attempts in flight than its own limits allow
  (``max_in_flight``, ``rate_limit_per_second``, one probe while its circuit
  is half-open).
- The last ``reserve`` free slots go only to subscriptions that hold none and
  are not failing, or whose tenant holds none: the first delivery of a healthy
  subscription, and a tenant's retry, start at once, however many slots slow
  or failing ones hold. A tenant that holds more than half the slots leaves
  half the reserve (``kept_for_tenants``) to the others while the worker
  knows another tenant's subscriptions: its own new subscriptions do not take
  the slot another tenant's next delivery needs.
- When an attempt ends while another subscription waits for a slot and its
  tenant holds fewer slots than this one's (or, in the same tenant, it holds
  fewer than this one), the slot moves to it (its next delivery, in the same
  task); else, after a success, the task goes on with this subscription's next
  waiting delivery without a trip to the database. Free slots are offered to
  waiting lines in the order of their tenants' share, smallest first.
- Deliveries are claimed ahead only for a healthy subscription (active, no
  rate limit, no failure since its last success), up to ``claim_ahead`` times
  the slots it may use; the last ``claim_ahead`` × ``reserve`` of all that may
  wait go only to subscriptions holding none waiting. Another subscription
  that holds no attempt, and finds no free slot it may take, may hold one
  delivery waiting (a retry): when every slot is taken and goes on with its
  line, the slots that move to the needier tenant are its only way in.
- With ``ordering: key``, a claim that takes the head of a line also takes the
  line's next deliveries (its *run*, :mod:`app.store.claims`), held like
  deliveries claimed ahead and within the same room. They are sent one after
  another: the next joins its subscription's waiting deliveries only when the
  one before it succeeded. After a failure the rest of the run goes back with
  the outcome (``Completion.returned``); given back otherwise (stopping, the
  subscription failing or paused), the store readies the line's head again.
- A claim leaves out the subscriptions at their limit. While one tenant holds
  more of the worker (attempts running and deliveries waiting) than all the
  others together (it *crowds*), every claim also takes the newest due
  deliveries of every other tenant (the store's *fresh* walk), and a *probe*
  (after new events, a timeout, once per poll interval, or when another
  tenant's line runs out of waiting deliveries) is a claim of its own that
  takes only those, ahead of the crowding tenant's outcomes: their new
  deliveries are found at once, not behind the crowding tenant's backlog.

No I/O: the worker loads subscriptions and writes what the policy decides.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from app.domain.circuit import CLOSED, CircuitPolicy, CircuitState, is_half_open
from app.domain.signing import Key
from app.store.events import StoredEvent
from app.store.subscriptions import Subscription
from app.store.work import Claimed, Completion, Work
from app.worker.limits import TokenBucket

if TYPE_CHECKING:
    from app.worker.attempt import Target

SUBSCRIPTION_CACHE_SECONDS = 1.0
# The subscriptions in use are read again this long before they go stale (in
# the background: app.worker.worker), while a delivery was claimed for any
# within the last KEEP_WARM_SECONDS: a subscription that gets an event a
# second does not wait for its own read.
REFRESH_AHEAD_SECONDS = 0.25
KEEP_WARM_SECONDS = 2.0
# The most deliveries of one line a claim takes at once (a head and its run).
MAX_RUN = 16
# A share of the slots kept for subscriptions that hold none (at least one).
RESERVE_FRACTION = 32


@dataclass(slots=True)
class Ready:
    """A claimed delivery waiting in the worker for a slot (not frozen, like
    :class:`~app.store.work.Completion`: one per delivery)."""

    delivery: Claimed
    event: StoredEvent
    payload: bytes
    # The next deliveries of its line held in this worker (its run), in order.
    after: list[Ready] | None = None
    # The outcome of the delivery before it in its run, while that may be unwritten.
    prev: Completion | None = None


def runs_of(work: list[Work]) -> list[tuple[Work, list[Work]]]:
    """Claimed work (in ``seq`` order) by line: each line's first delivery, its
    head, with the line's next ones, its run; a delivery without an ordering
    key is a head with no run."""
    grouped: list[tuple[Work, list[Work]]] = []
    runs: dict[tuple[str, str], list[Work]] = {}
    for w in work:
        key = w.delivery.ordering_key
        run = runs.get((w.delivery.subscription_id, key)) if key is not None else None
        if run is not None:
            run.append(w)
            continue
        grouped.append((w, []))
        if key is not None:
            runs[w.delivery.subscription_id, key] = grouped[-1][1]
    return grouped


@dataclass(slots=True, eq=False)
class Line:
    """What the worker knows about one subscription while it delivers for it."""

    subscription: Subscription
    loaded_at: float
    in_flight: int = 0
    bucket: TokenBucket | None = None
    circuit: CircuitState = CLOSED
    keys: list[Key] = field(default_factory=list)  # empty: to be derived again
    keys_until: datetime | None = None  # when the previous secret stops signing
    marked_at: float = 0.0  # when a change to its subscription was last reported
    target: Target | None = None  # worked out at its first attempt after a load
    waiting: deque[Ready] = field(default_factory=deque)
    following: int = 0  # deliveries held in runs, behind one running or waiting

    def prefetches(self) -> bool:
        """Whether deliveries may be claimed ahead of a free slot: not when a
        limit other than ``max_in_flight`` could hold them, nor while failing."""
        return (
            self.subscription.status == "active"
            and self.bucket is None
            and self.circuit.consecutive_failures == 0
        )


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    """How much the next claim may take, and which subscriptions it leaves out."""

    capacity: int  # free slots plus free room ahead, over all subscriptions
    room: int  # what the known subscriptions may take now
    exclude: list[str]  # subscriptions at their limit
    crowding: list[str]  # the subscriptions of the tenant that crowds the worker
    fresh_room: int  # what the known subscriptions of the other tenants may take now
    run: int = 1  # the most deliveries of one line a claim may take
    single: list[str] = field(default_factory=list)  # subscriptions that hold no run


class LinePolicy:
    def __init__(self, concurrency: int, claim_ahead: int, circuit: CircuitPolicy) -> None:
        self.lines: dict[str, Line] = {}
        self.slots = concurrency
        self.reserve = max(1, concurrency // RESERVE_FRACTION) if concurrency > 1 else 0
        # Of the reserve, what a tenant holding more than half the slots leaves
        # to the others (their first deliveries and retries).
        self.kept_for_tenants = (self.reserve + 1) // 2
        self.claim_ahead = claim_ahead
        self.circuit_policy = circuit
        self.used = 0  # slots held by running attempts
        self.waiting = 0  # deliveries claimed ahead (runs included), over all lines
        self.following: set[int] = set()  # the deliveries held in runs
        # Lines with deliveries waiting, in the order they are offered free slots.
        self._queued: dict[str, Line] = {}
        self.tenant_in_flight: dict[str, int] = {}  # attempts running, by tenant
        self._tenant_lines: dict[str, int] = {}  # lines known, by tenant
        self._released: list[int] = []  # claims to give back in the next cycle
        self._ran_out = False  # a line of a tenant not crowding ran out of waiting deliveries
        self._crowding: str | None = None  # the tenant crowding the worker at the last claim
        self._used_at = 0.0  # when subscriptions were last looked up for deliveries

    # -- limits ---------------------------------------------------------------

    def allowance(self, line: Line) -> int:
        """More attempts ``line``'s own limits allow now."""
        sub = line.subscription
        slots = sub.max_in_flight - line.in_flight
        if is_half_open(line.circuit.consecutive_failures, self.circuit_policy):
            slots = min(slots, 1 - line.in_flight)
        if line.bucket is not None:
            slots = min(slots, line.bucket.available())
        return slots

    def available(self, line: Line) -> int:
        """Free slots ``line`` may take: the whole reserve while its tenant holds
        none (a retry too: it is not left behind another tenant's backlog); the
        reserve while it holds none and has not failed since its last success,
        but for the part kept for the other tenants while its own holds more
        than half the slots (its new subscriptions do not take the slots
        another tenant's first delivery needs)."""
        free = self.slots - self.used
        if line.in_flight:
            return free - self.reserve
        share = self._share(line)
        if not share:
            return free
        if line.circuit.consecutive_failures:
            return free - self.reserve
        if 2 * share > self.slots and len(self._tenant_lines) > 1:
            return free - self.kept_for_tenants
        return free

    def ahead_limit(self, line: Line) -> int:
        if not line.prefetches():
            return 1 if self._waits_alone(line) and self.available(line) <= 0 else 0
        usable = min(line.subscription.max_in_flight, self.slots - self.reserve)
        return self.claim_ahead * max(1, usable)

    def _waits_alone(self, line: Line) -> bool:
        """Whether ``line``, not claimed ahead for (failing, rate-limited), may
        still hold one delivery waiting for a slot: while it holds no attempt and
        its own limits would start one. Else, with every slot taken (the reserve
        too, by a subscription that held none) and each going on with its
        line's next delivery, it would not be claimed at all; waiting, it takes
        the next slot that moves to the needier tenant (:meth:`next_after`)."""
        return (
            line.subscription.status == "active"
            and line.in_flight == 0
            and line.following == 0
            and self.allowance(line) > 0
        )

    def room_ahead(self, line: Line) -> int:
        """How many more deliveries ``line`` may hold waiting for a slot: the
        last of the room overall only while it holds none."""
        overall = self.claim_ahead * self.slots - self.waiting
        held = len(line.waiting) + line.following
        if held:
            overall -= self.claim_ahead * self.reserve
        return min(self.ahead_limit(line) - held, overall)

    def _take(self, line: Line) -> bool:
        """One more attempt for ``line`` if its own limits allow (a token taken)."""
        if self.allowance(line) <= 0:
            return False
        if line.bucket is not None and not line.bucket.take():
            return False
        line.in_flight += 1
        self._count(line, 1)
        return True

    def _count(self, line: Line, change: int) -> None:
        tenant = line.subscription.tenant_id
        held = self.tenant_in_flight.get(tenant, 0) + change
        if held:
            self.tenant_in_flight[tenant] = held
        else:
            del self.tenant_in_flight[tenant]

    def _in_turn(self) -> list[Line]:
        """The waiting lines, the smallest tenant's share first (a stable sort
        keeps the turn within a tenant; with one tenant there is nothing to sort)."""
        lines = list(self._queued.values())
        tenants = {line.subscription.tenant_id for line in lines}
        if len(tenants | self.tenant_in_flight.keys()) < 2:
            return lines
        return sorted(lines, key=self._share)

    def _share(self, line: Line) -> int:
        return self.tenant_in_flight.get(line.subscription.tenant_id, 0)

    def take_slot(self, line: Line) -> bool:
        """A free slot for ``line``, if the slots and its limits allow."""
        if self.available(line) <= 0 or not self._take(line):
            return False
        self.used += 1
        return True

    # -- claims ---------------------------------------------------------------

    def claim_plan(self) -> ClaimPlan:
        """Claim no more than the known subscriptions can start or hold now:
        what is claimed over a limit has to be given back in another
        transaction. Subscriptions not met yet compete in the same claim."""
        capacity = self.slots - self.used + max(0, self.claim_ahead * self.slots - self.waiting)
        self._crowding = self._crowding_tenant()
        exclude: list[str] = []
        crowding: list[str] = []
        single: list[str] = []
        room = fresh_room = 0
        for sid, line in self.lines.items():
            if not line.prefetches():
                single.append(sid)
            start = min(self.allowance(line), self.available(line))
            line_room = max(0, start) + max(0, self.room_ahead(line))
            crowds = line.subscription.tenant_id == self._crowding
            if crowds:
                crowding.append(sid)
            if line_room <= 0:
                exclude.append(sid)
                continue
            room += line_room
            if not crowds:
                fresh_room += line_room
        run = min(MAX_RUN, 1 + self.claim_ahead)
        return ClaimPlan(capacity, room, exclude, crowding, fresh_room, run, single)

    def _crowding_tenant(self) -> str | None:
        """The tenant holding more of the worker (attempts running, deliveries
        waiting) than all the others together, if one does."""
        held: dict[str, int] = {}
        for line in self.lines.values():
            tenant = line.subscription.tenant_id
            held[tenant] = held.get(tenant, 0) + line.in_flight + len(line.waiting)
        if not held:
            return None
        tenant = max(held, key=held.__getitem__)
        return tenant if 2 * held[tenant] > sum(held.values()) else None

    def take_ran_out(self) -> bool:
        """Whether a line of a tenant not crowding ran out of waiting deliveries
        since the last call: the next claim probes for its newest due ones."""
        ran_out, self._ran_out = self._ran_out, False
        return ran_out

    def settle(self, stopping: bool) -> list[tuple[Line, Ready]]:
        """Before a claim: give back what a subscription that is failing,
        limited, paused or gone holds waiting; return what free slots now start."""
        for line in list(self._queued.values()):
            alone = len(line.waiting) == 1 and self._waits_alone(line)
            if stopping or not (line.prefetches() or alone):
                self.drop_waiting(line)
        return [] if stopping else self.start_waiting()

    def released(self) -> list[int]:
        """The claims to give back, once."""
        seqs, self._released = self._released, []
        return seqs

    def queued(self) -> set[str]:
        """The subscriptions with deliveries waiting."""
        return set(self._queued)

    def held(self) -> list[int]:
        """The deliveries waiting in the worker and held in runs (their leases are kept)."""
        held = [r.delivery.seq for line in self._queued.values() for r in line.waiting]
        held += self.following
        return held

    # -- runs -----------------------------------------------------------------

    def attach(self, line: Line, head: Ready, run: list[Ready]) -> list[int]:
        """Hold ``run`` (the next deliveries of ``head``'s line, in order) behind
        ``head``, as far as ``line``'s room ahead allows; the seqs of the rest,
        to give back (the end of the run: what is held has no gap)."""
        kept = 0
        while kept < len(run) and self.room_ahead(line) > 0:
            self.following.add(run[kept].delivery.seq)
            line.following += 1
            self.waiting += 1
            kept += 1
        if kept:
            head.after = run[:kept]
        return [r.delivery.seq for r in run[kept:]]

    def follow(self, line: Line, ready: Ready, done: Completion) -> None:
        """``ready`` succeeded (``done``): the next of its run waits for a slot,
        first in its line, with the rest of the run behind it."""
        run = ready.after
        if not run:
            return
        ready.after = None
        following = run[0]
        following.after, following.prev = run[1:] or None, done
        done.followed = True
        self.following.discard(following.delivery.seq)
        line.following -= 1
        line.waiting.appendleft(following)  # already counted in self.waiting
        self._queued.setdefault(line.subscription.id, line)

    def take_run(self, line: Line, ready: Ready) -> list[int]:
        """What ``ready`` holds of its run, let go (its seqs)."""
        run = ready.after or []
        ready.after = None
        for r in run:
            self.following.discard(r.delivery.seq)
        line.following -= len(run)
        self.waiting -= len(run)
        return [r.delivery.seq for r in run]

    def drop_run(self, line: Line, ready: Ready) -> None:
        """Give back what ``ready`` holds of its run (in the next cycle)."""
        self._released.extend(self.take_run(line, ready))

    # -- slots ----------------------------------------------------------------

    def start_waiting(self) -> list[tuple[Line, Ready]]:
        """Fill free slots with waiting deliveries, one line at a time in turn."""
        started: list[tuple[Line, Ready]] = []
        progress = True
        while progress and self._queued and self.used < self.slots:
            progress = False
            for line in self._in_turn():
                if line.waiting and self.take_slot(line):
                    started.append((line, self._pop(line)))
                    progress = True
        return started

    def next_after(self, line: Line, succeeded: bool, stopping: bool) -> tuple[Line, Ready] | None:
        """The task whose attempt for ``line`` ended: what it sends next with its
        slot, or None when the slot is free again. After a failure the line's
        waiting deliveries go back: the next cycle decides (its circuit may hold
        them)."""
        if not succeeded:
            self.drop_waiting(line)
        if not stopping:
            needier = self._needier(line)
            if needier is not None:
                line.in_flight -= 1
                self._count(line, -1)
                return needier, self._pop(needier)
            if (
                succeeded
                and line.waiting
                and line.in_flight <= line.subscription.max_in_flight
                and line.prefetches()
            ):
                return line, self._pop(line)
        self.free_slot(line)
        return None

    def free_slot(self, line: Line) -> None:
        line.in_flight -= 1
        self._count(line, -1)
        self.used -= 1

    def _needier(self, line: Line) -> Line | None:
        """A line waiting for a slot (its limits checked, the slot taken) whose
        tenant holds fewer than ``line``'s, or in ``line``'s tenant, that holds
        fewer than ``line`` while ``line`` holds more than the average."""
        if not self._queued or (len(self._queued) == 1 and line.waiting):
            return None  # only ``line`` waits (it is queued while it holds waiting ones)
        share = self._share(line)
        for other in self._in_turn():
            if other is line:
                continue
            if other.subscription.tenant_id != line.subscription.tenant_id:
                needier = self._share(other) + 1 < share
            else:
                needier = (
                    line.in_flight * len(self._queued) > self.used
                    and other.in_flight + 1 < line.in_flight
                )
            if needier and self._take(other):
                # To the back of the turn.
                del self._queued[other.subscription.id]
                self._queued[other.subscription.id] = other
                return other
        return None

    def queue(self, line: Line, ready: Ready) -> None:
        """Keep a claimed delivery waiting for a slot (see :meth:`room_ahead`)."""
        line.waiting.append(ready)
        self.waiting += 1
        self._queued.setdefault(line.subscription.id, line)

    def _pop(self, line: Line) -> Ready:
        ready = line.waiting.popleft()
        self.waiting -= 1
        if not line.waiting:
            self._queued.pop(line.subscription.id, None)
            self._ran_out = self._ran_out or line.subscription.tenant_id != self._crowding
        return ready

    def drop_waiting(self, line: Line) -> None:
        """Give back what ``line`` holds waiting (in the next cycle), with their
        runs. An outcome not yet written before one of them now readies its line."""
        for ready in line.waiting:
            if ready.after:
                self.drop_run(line, ready)
            if ready.prev is not None:
                ready.prev.followed = False
        self._released.extend(ready.delivery.seq for ready in line.waiting)
        self.waiting -= len(line.waiting)
        line.waiting.clear()
        self._queued.pop(line.subscription.id, None)

    # -- subscriptions --------------------------------------------------------

    def stale(self, ids: Iterable[str], now: float) -> set[str]:
        """Which of ``ids`` (and of the lines known) need their subscription
        loaded, for deliveries about to start or wait."""
        stale = {i for i in ids if i not in self.lines}
        self._used_at = now
        return stale | self._older_than(now)

    def warming(self, now: float) -> set[str]:
        """The subscriptions to read again ahead of use (none while no
        delivery was claimed for a while): those that go stale soon."""
        if now - self._used_at > KEEP_WARM_SECONDS:
            return set()
        return self._older_than(now + REFRESH_AHEAD_SECONDS)

    def _older_than(self, at: float) -> set[str]:
        return {
            i for i, line in self.lines.items() if at - line.loaded_at > SUBSCRIPTION_CACHE_SECONDS
        }

    def load(self, subscription_id: str, sub: Subscription | None, now: float) -> None:
        """Take in a subscription as read from ``now`` (None: it is gone). A
        change reported after ``now`` leaves it stale: the read may predate it."""
        line = self.lines.get(subscription_id)
        if sub is None:
            if line is not None:
                self.drop_waiting(line)
                if line.in_flight == 0:
                    del self.lines[subscription_id]
                    self._forget_tenant(line.subscription.tenant_id)
            return
        if line is None:
            self.lines[subscription_id] = line = Line(sub, now)
            tenant = sub.tenant_id
            self._tenant_lines[tenant] = self._tenant_lines.get(tenant, 0) + 1
            line.circuit = CircuitState(
                sub.consecutive_failures, sub.failing_since, sub.circuit_open_until
            )
        elif sub != line.subscription:
            line.keys, line.keys_until, line.target = [], None, None
        line.subscription = sub
        line.loaded_at = now if line.marked_at <= now else 0.0
        rate = sub.rate_limit_per_second
        if rate is None:
            line.bucket = None
        elif line.bucket is None or line.bucket.rate != rate:
            line.bucket = TokenBucket(rate)

    def _forget_tenant(self, tenant: str) -> None:
        left = self._tenant_lines[tenant] - 1
        if left:
            self._tenant_lines[tenant] = left
        else:
            del self._tenant_lines[tenant]

    def mark_stale(self, subscription_id: str, now: float) -> None:
        """Forget a subscription's settings (not its counters): it changed at ``now``."""
        line = self.lines.get(subscription_id)
        if line is not None:
            line.loaded_at, line.marked_at = 0.0, now

    def seconds_until_token(self) -> float | None:
        """When the first rate-limited line that has run dry gets a token."""
        waits = [
            line.bucket.seconds_until_token()
            for line in self.lines.values()
            if line.bucket is not None and line.bucket.available() < 1
        ]
        return min(waits, default=None)
