"""What the worker asks the store to claim: the claim request for a plan.

The line policy (:mod:`app.worker.lines`) says how much the known
subscriptions may take and which are at their limit; this turns that into the
store's :class:`~app.store.work.ClaimRequest` (how many, which walks) and says
afterwards whether a probe claim saw everything it looked for. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from app.store.work import ClaimRequest, Work
from app.worker.lines import ClaimPlan

# Room a probe claim adds for subscriptions this worker has not met yet.
UNKNOWN_SUBSCRIPTION_PROBE = 8


def claim_request(
    plan: ClaimPlan,
    owner: str,
    now: datetime,
    lease: timedelta,
    batch: int,
    probing: bool,
    *,
    quick: bool = False,
    resumed: Sequence[str] = (),
) -> ClaimRequest | None:
    """The claim for ``plan`` (None: nothing to claim). Subscriptions this
    worker has not met yet compete in the same claim; room is made for a few of
    them only in a probe claim (after an outside wake-up, a timeout, or once per
    poll interval), not after every attempt. A ``quick`` probe is made only
    while a tenant crowds the worker and another tenant's subscription has
    room, and takes only the other tenants' newest due deliveries (the fresh
    walk): a small claim that goes ahead of the crowding tenant's outcomes.
    ``resumed`` are the subscriptions whose parked deliveries the oldest walk's
    share may take (:class:`~app.worker.retention.ParkingJob`)."""
    if plan.capacity <= 0 or (quick and (not plan.crowding or plan.fresh_room <= 0)):
        return None
    unknown = UNKNOWN_SUBSCRIPTION_PROBE if probing else 0
    room = plan.room + unknown
    if room <= 0:
        return None
    limit = min(plan.capacity, batch, room)
    # While a tenant crowds the worker, every claim also takes the newest due
    # deliveries of the others (a bounded walk: 0.3 ms when it finds nothing):
    # theirs are not behind its backlog, and the claim that follows their
    # commit takes them, whether or not it is a probe. While all
    # its subscriptions are at their limit, a claim takes only those: the
    # oldest walk would pass its whole backlog to find the others'.
    fresh, oldest = 0, None
    if plan.crowding and (quick or set(plan.crowding) <= set(plan.exclude)):
        fresh = limit = min(limit, plan.fresh_room + unknown)
        oldest = 0
    elif plan.crowding:
        fresh = min(limit, plan.fresh_room + unknown)
        # The oldest walk meets the crowding tenant's backlog first: it takes
        # no more than that tenant's lines may start or hold now (the room the
        # others have is the fresh walk's). Whatever it took over would go
        # back in a transaction of its own, cycle after cycle.
        oldest = plan.room - plan.fresh_room
    if limit <= 0:
        return None
    return ClaimRequest(
        owner,
        now,
        now + lease,
        limit,
        plan.exclude,
        fresh=fresh,
        crowding=plan.crowding,
        oldest=oldest,
        run=plan.run,
        single=plan.single,
        resumed=resumed,
    )


def probe_saw_everything(request: ClaimRequest, work: list[Work]) -> bool:
    """Whether a probe claim saw every due delivery it looks for: with a fresh
    walk, it took fewer than it might outside the crowding tenant (the oldest
    walk may have found some of those too); without, fewer than the limit."""
    if not request.fresh:
        return len(work) < request.limit
    crowding = set(request.crowding)
    return sum(w.delivery.subscription_id not in crowding for w in work) < request.fresh
