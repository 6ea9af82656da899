"""What the worker and the store say to each other about a cycle: a claimed
delivery, the claim's request, the work it returns, an attempt's completion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from app.store.events import StoredEvent


@dataclass(slots=True)
class Claimed:
    """A delivery leased to a worker (not frozen, like :class:`Completion`)."""

    seq: int
    id: str
    event_id: str
    subscription_id: str
    ordering_key: str | None
    attempts: int  # attempts made before this one
    round_attempts: int  # of those, since the last redrive (the retry schedule's position)


@dataclass(slots=True)
class Completion:
    """The end of one attempt, as the worker writes it back. Not frozen: one is
    built per attempt, and a frozen dataclass's ``__init__`` costs about twice a
    plain one's (a call per field); nothing changes one once built."""

    delivery: Claimed
    owner: str
    status: str  # pending (retry), succeeded, dead
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None  # this attempt's transport error, if it got no status
    response_body: str | None
    next_attempt_at: datetime | None
    finished_at: datetime
    summary: str | None = None  # the delivery's ``last_error``
    request_headers: str | None = None  # JSON object: the headers sent
    # The worker holds the next delivery of this one's line (a run, see
    # app.store.claims): the outcome need not ready the line's next head.
    followed: bool = False
    # The deliveries of this one's run the worker will not attempt after this
    # outcome (a retry or a dead letter): they go back to pending in the same write.
    returned: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a worker asks for: up to ``limit`` due deliveries, leased to ``owner``.

    Of those, up to ``fresh`` are the newest due deliveries of every
    subscription but ``exclude`` and ``crowding``; the rest, up to ``oldest``
    of them (None: no bound but the limit), are the oldest due deliveries of
    every subscription but ``exclude``. With
    ``run`` above 1, each head of a line taken also brings up to ``run`` - 1 of
    the line's next deliveries (its run), but not for the subscriptions in
    ``single``; everything taken stays within ``limit``. The oldest walk's
    share also takes the parked deliveries of the subscriptions in
    ``resumed`` (:mod:`app.store.parking`), in the order they fell due."""

    owner: str
    now: datetime
    lease_until: datetime
    limit: int
    exclude: Sequence[str] = ()  # subscriptions at their limit in this worker
    fresh: int = 0
    crowding: Sequence[str] = ()  # the subscriptions of a tenant holding most slots
    oldest: int | None = None  # 0: no oldest walk
    run: int = 1  # the most deliveries of one line a claim takes
    single: Sequence[str] = ()  # subscriptions whose lines are claimed one delivery at a time
    resumed: Sequence[str] = ()  # subscriptions sendable again with parked deliveries


@dataclass(slots=True)
class Work:
    """A claimed delivery with the event it carries (one per delivery: not frozen)."""

    delivery: Claimed
    event: StoredEvent
