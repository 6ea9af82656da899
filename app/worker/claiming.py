"""What the worker asks the store to claim: the claim request for a plan.

The line policy (:mod:`app.worker.lines`) says how much the known
subscriptions may take and which are at their limit; this turns that into the
store's :class:`~app.store.work.ClaimRequest` (how many, which walks) and says
afterwards whether a probe claim saw everything it looked for. No I/O.
"""

from __future__ import annotations

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
) -> ClaimRequest | None:
    """The claim for ``plan`` (None: nothing to claim). Subscriptions this
    worker has not met yet compete in the same claim; room is made for a few of
    them only in a probe claim (after an outside wake-up, a timeout, or once per
    poll interval), not after every attempt."""
    if plan.capacity <= 0:
        return None
    unknown = UNKNOWN_SUBSCRIPTION_PROBE if probing else 0
    room = plan.room + unknown
    if room <= 0:
        return None
    limit = min(plan.capacity, batch, room)
    # While a tenant crowds the worker, a probe also takes the newest due
    # deliveries of the others: theirs are not behind its backlog. While all
    # its subscriptions are at their limit, a claim takes only those: the
    # oldest walk would pass its whole backlog to find the others'.
    fresh, oldest = 0, True
    if plan.crowding and set(plan.crowding) <= set(plan.exclude):
        fresh = limit = min(limit, plan.fresh_room + unknown)
        oldest = False
    elif probing and plan.crowding:
        fresh = min(limit, plan.fresh_room + unknown)
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
    )


def probe_saw_everything(request: ClaimRequest, work: list[Work]) -> bool:
    """Whether a probe claim saw every due delivery it looks for: with a fresh
    walk, it took fewer than it might outside the crowding tenant (the oldest
    walk may have found some of those too); without, fewer than the limit."""
    if not request.fresh:
        return len(work) < request.limit
    crowding = set(request.crowding)
    return sum(w.delivery.subscription_id not in crowding for w in work) < request.fresh
