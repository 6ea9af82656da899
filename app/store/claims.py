"""The claim: which due deliveries a worker takes, leased to it, with their events.

The claim query is the heart of delivery. Both dialects are side by side
below; they differ only in PostgreSQL's ``FOR UPDATE … SKIP LOCKED`` (SQLite
has one writer, whose ``BEGIN IMMEDIATE`` transaction is lock enough).

The per-key ordering rule lives in the query: a delivery with an ordering key
is claimed only while no earlier delivery of its line is unfinished (pending,
in flight, or dead with ``on_dead_letter = 'block'``). The ``ready`` mark only
keeps the scan short; the ``NOT EXISTS`` is what guarantees the order. A head
taken may bring its line's next pending deliveries (its *run*, ``_pg_runs``,
``SQLITE_RUNS``), with no gap, leased to the same worker: while one of them is
in flight every later delivery of the line has an earlier busy one, so no
other claim takes any; the worker sends them in order, each only after the
previous succeeded, and gives the rest back when one does not.

The worker's cycle (:func:`app.store.deliveries.complete_and_claim`) claims
after writing its outcomes, in the same transaction or, on PostgreSQL when
the outcomes left their lines, in the next one.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.events import StoredEvent
from app.store.lines import busy, promote_sql
from app.store.schema import UTCDateTime, sqlite_timestamp, stored_utc
from app.store.work import Claimed, ClaimRequest, Work


def timed_sql(
    statement: str, times: tuple[str, ...] = (), expanding: tuple[str, ...] = ()
) -> TextClause:
    """Raw SQL whose time parameters go through :class:`UTCDateTime` like the ORM's."""
    params = [bindparam(name, type_=UTCDateTime()) for name in times]
    params += [bindparam(name, expanding=True) for name in expanding]
    return text(statement).bindparams(*params)


# A delivery the claim may take: due, the head of its line (or of no line), its
# subscription active with its circuit not open, and no earlier delivery of its
# line unfinished. ``{mark}`` is ``d.ready`` for the claim index's deliveries
# (the parked walk checks ``d.parked`` itself).
_CLAIMABLE = """
    d.status = 'pending' AND {mark}
      AND d.next_attempt_at <= :now
      AND s.status = 'active'
      AND (s.circuit_open_until IS NULL OR s.circuit_open_until <= :now)
      AND (d.ordering_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries p
            WHERE p.subscription_id = d.subscription_id
              AND p.ordering_key = d.ordering_key
              AND p.seq < d.seq
              AND {busy_line}))
"""
# A claim walks the claim index twice. The *fresh* walk looks only at the
# newest FRESH_WINDOW due deliveries, newest first, and leaves out the
# subscriptions of the tenant that holds most of the worker (``crowding``):
# another tenant's new delivery is found at once, however long the backlog the
# worker is serving. The *oldest* walk fills the rest of the limit oldest
# first, as the deliveries fell due, for every subscription with room. The window
# bounds the fresh walk's cost when it finds nothing. The oldest walk's cost is
# what it passes of the subscriptions left out (``exclude``), which is why the
# worker leaves it out while the crowding tenant is at its limit.
FRESH_WINDOW = 512
_FRESH = """
    SELECT d.seq, d.subscription_id AS sub, d.ordering_key AS key
    FROM deliveries d
    JOIN subscriptions s ON s.id = d.subscription_id
    WHERE {in_window} AND {claimable} AND {not_crowding} AND {not_excluded}
    ORDER BY d.next_attempt_at DESC, d.seq DESC
    LIMIT :fresh
"""
_WINDOW = f"""
    SELECT r.seq FROM deliveries r {{index_hint}}
    WHERE r.status = 'pending' AND r.ready AND r.next_attempt_at <= :now
    ORDER BY r.next_attempt_at DESC, r.seq DESC
    LIMIT {FRESH_WINDOW}
"""
_OLDEST = """
    SELECT d.seq, d.subscription_id AS sub, d.ordering_key AS key, d.next_attempt_at AS due
    FROM deliveries d {index_hint}
    JOIN subscriptions s ON s.id = d.subscription_id
    WHERE {claimable} AND {not_excluded} AND {not_fresh}
    ORDER BY d.next_attempt_at, d.seq
    LIMIT :oldest
"""

# A *parked* walk (:mod:`app.store.parking`) takes the parked deliveries of the
# subscriptions the worker names as resumed (``:resumed``: active, circuit
# closed, with parked deliveries): each one's oldest first, on the partial index
# of parked rows, up to the oldest walk's LIMIT, under the same rules. The claim
# clears ``parked`` and sets ``ready`` in the write that leases them, so a
# resumed backlog is never written a second time to be readied.
_PARKED_CLAIMABLE = f"""d.parked AND d.subscription_id = s.id
      AND {_CLAIMABLE.format(mark="TRUE", busy_line=busy("p", "s"))}
      AND s.circuit_open_until IS NULL"""

# What the claim takes: the fresh walk's, then the oldest walk's up to the
# limit; while some subscription is resumed, the oldest and parked walks'
# together, in the order they fell due (a claim that names none has no parked
# walk and sorts nothing). The walks' own LIMIT is a plain parameter (the whole
# limit, or 0 to leave them out): an expression there hides its size from
# PostgreSQL's planner, which then sorted the whole backlog (30 ms a claim at 30,000).
_TAKEN = """
    SELECT seq, sub, key FROM fresh
    UNION ALL
    SELECT * FROM (
        SELECT seq, sub, key FROM {rest}
        LIMIT :limit - (SELECT count(*) FROM fresh)) AS rest
"""
_REST = "oldest"
_REST_RESUMING = "(SELECT * FROM oldest UNION ALL SELECT * FROM parked) AS due ORDER BY due, seq"

# SQLite's planner prefers the (status, subscription_id) index and then sorts
# the whole backlog; the claim index serves the ORDER BY ... LIMIT directly.
SQLITE_CLAIM_HINT = "INDEXED BY ix_deliveries_claim"


# PostgreSQL runs the claim as a prepared statement and soon with a generic
# plan, which must not sort the backlog either. Two spellings keep it on the
# claim index: the excluded subscriptions as one array on the subscriptions
# side (``d.subscription_id NOT IN ($n)`` with one subscription in the
# statistics estimated one row, and a sort looked cheap), and the claimed rows
# joined back by ``seq = ANY(ARRAY(…))`` (a LIMIT of unknown size estimated
# hundreds of rows and hashed the whole table).
def _pg_walks() -> tuple[str, str, str]:
    claimable = _CLAIMABLE.format(mark="d.ready", busy_line=busy("p", "s"))
    fresh = _FRESH.format(
        in_window=f"d.seq = ANY(ARRAY({_WINDOW.format(index_hint='')}))",
        claimable=claimable,
        not_crowding="s.id <> ALL(CAST(:crowding AS TEXT[]))",
        not_excluded="s.id <> ALL(CAST(:exclude AS TEXT[]))",
    )
    oldest = _OLDEST.format(
        index_hint="",
        claimable=claimable,
        not_excluded="s.id <> ALL(CAST(:exclude AS TEXT[]))",
        not_fresh="d.seq <> ALL(ARRAY(SELECT seq FROM fresh))",
    )
    parked = f"""
    SELECT p.seq, p.sub, p.key, p.due
    FROM subscriptions s
    CROSS JOIN LATERAL (
        SELECT d.seq, d.subscription_id AS sub, d.ordering_key AS key, d.next_attempt_at AS due
        FROM deliveries d
        WHERE {_PARKED_CLAIMABLE}
        ORDER BY d.seq
        LIMIT :oldest
        FOR UPDATE OF d SKIP LOCKED
    ) AS p
    WHERE s.id = ANY(CAST(:resumed AS TEXT[])) AND s.id <> ALL(CAST(:exclude AS TEXT[]))
"""
    return fresh, oldest, parked


# SQLite's fresh walk goes through the window in its order and stops at the
# ``:fresh``-th delivery it may take: the window is the outer loop (``CROSS
# JOIN`` fixes SQLite's join order) and yields its rows newest first, so the
# first rows found are the newest, as the ORDER BY of ``_FRESH`` would have
# them, without looking up the window's other rows and sorting them (SQLite
# 3.40 sorts again whatever the subquery's order). With 100 or 10,000 tenants
# it looks up about ten rows instead of 512 (0.05 against 0.3 ms). The EXISTS,
# evaluated once, skips the walk when no subscription is left outside the
# crowding and excluded ones (one tenant crowding alone: nothing to find); it
# reads subscriptions until the first one outside those lists.
_SQLITE_OTHERS = """{s}.id NOT IN (SELECT value FROM json_each(:crowding))
      AND {s}.id NOT IN (SELECT value FROM json_each(:exclude))"""
_SQLITE_FRESH = f"""
    SELECT d.seq, d.subscription_id AS sub, d.ordering_key AS key
    FROM ({_WINDOW.format(index_hint=SQLITE_CLAIM_HINT)}) AS w
    CROSS JOIN deliveries d ON d.seq = w.seq
    JOIN subscriptions s ON s.id = d.subscription_id
    WHERE {{claimable}} AND {_SQLITE_OTHERS.format(s="s")}
      AND EXISTS (SELECT 1 FROM subscriptions other WHERE {_SQLITE_OTHERS.format(s="other")})
    LIMIT :fresh
"""


def _sqlite_walks() -> tuple[str, str, str]:
    claimable = _CLAIMABLE.format(mark="d.ready", busy_line=busy("p", "s"))
    fresh = _SQLITE_FRESH.format(claimable=claimable)
    oldest = _OLDEST.format(
        index_hint=SQLITE_CLAIM_HINT,
        claimable=claimable,
        not_excluded="s.id NOT IN (SELECT value FROM json_each(:exclude))",
        not_fresh="d.seq NOT IN (SELECT seq FROM fresh)",
    )
    # No LATERAL: the resumed subscriptions are the outer loop, each one's
    # parked deliveries read in ``seq`` order on the partial index, and the walk
    # stops at the LIMIT (the worker names them in a turning order, so that one
    # subscription's backlog does not always come first).
    parked = f"""
    SELECT d.seq, d.subscription_id AS sub, d.ordering_key AS key, d.next_attempt_at AS due
    FROM json_each(:resumed) AS r
    CROSS JOIN subscriptions s ON s.id = r.value
    CROSS JOIN deliveries d INDEXED BY ix_deliveries_parked
    WHERE {_PARKED_CLAIMABLE}
      AND s.id NOT IN (SELECT value FROM json_each(:exclude))
    LIMIT :oldest
"""
    return fresh, oldest, parked


_CLAIMED_COLUMNS = (
    "deliveries.seq, deliveries.id, deliveries.event_id, deliveries.subscription_id, "
    "deliveries.ordering_key, deliveries.attempts, deliveries.round_attempts"
)
_EVENT_COLUMNS = (
    "e.seq AS event_seq, e.type AS event_type, e.key AS event_key, e.data AS event_data, "
    "e.schema_version AS event_schema_version, e.occurred_at AS event_occurred_at, "
    "e.received_at AS event_received_at, e.traceparent AS event_traceparent, "
    "e.tracestate AS event_tracestate"
)


# PostgreSQL: the lines the cycle's outcomes left (none outside key ordering),
# whose heads the claim readies again (``caught_up``): the outcome write took
# their locks inside its own statement, after its snapshot, so it may have
# missed a delivery added to one of them and committed just before; this
# statement's snapshot comes after the locks (and after the outcome write's
# commit, when the cycle commits in between) and holds it. A head readied here
# was not ready in this snapshot, so the walks below do not take it: the next
# cycle's claim does. (In the usual case the outcome write readied every head
# already and this finds nothing to change.)
_FREED = "unnest(CAST(:freed_subs AS TEXT[]), CAST(:freed_keys AS TEXT[])) AS line(sub, key)"


# Runs. A head of a line taken above brings the line's next deliveries with it,
# leased to the same worker, which sends them one after another (the next only
# after the previous succeeded): they are never readied and claimed one by one.
# A run is the line's busy deliveries after the head, in ``seq`` order, up to
# ``:followers`` of them, as long as each is pending and due: it ends before the
# first one that is not (in flight elsewhere, dead and blocking, or a retry not
# yet due), so it holds no gap. ``candidates`` walks each line on the line
# index (``busy`` spells its predicate) for at most ``:followers`` rows, numbered
# ``n`` in order; the runs share what the limit leaves after the heads, the
# first follower of every run before any run's second.
def _pg_runs() -> str:
    return f"""
        candidates AS MATERIALIZED (
            SELECT h.seq AS head, c.seq, c.ok, c.n
            FROM taken h
            JOIN subscriptions s ON s.id = h.sub
            CROSS JOIN LATERAL (
                SELECT f.seq, f.status = 'pending' AND f.next_attempt_at <= :now AS ok,
                       row_number() OVER (ORDER BY f.seq) AS n
                FROM deliveries f
                WHERE {busy("f", "s")}
                  AND f.subscription_id = h.sub AND f.ordering_key = h.key AND f.seq > h.seq
                ORDER BY f.seq
                LIMIT :followers
            ) AS c
            WHERE h.key IS NOT NULL AND s.id <> ALL(CAST(:single AS TEXT[]))
        ),
        locked AS MATERIALIZED (
            SELECT seq FROM deliveries
            WHERE seq = ANY(ARRAY(SELECT seq FROM candidates WHERE ok)) AND status = 'pending'
            FOR UPDATE SKIP LOCKED
        ),
        followers AS MATERIALIZED (
            SELECT seq FROM (
                SELECT c.seq, c.n, bool_and(c.ok AND l.seq IS NOT NULL)
                           OVER (PARTITION BY c.head ORDER BY c.n) AS kept
                FROM candidates c LEFT JOIN locked l ON l.seq = c.seq
            ) AS run
            WHERE kept
            ORDER BY n, seq
            LIMIT :limit - (SELECT count(*) FROM taken)
        )"""


# On PostgreSQL a follower another transaction holds (``SKIP LOCKED`` passes it
# by, ``locked``) ends its run like one that is not pending: the run never skips.
# SQLite has one writer and no LATERAL: a second statement over the heads the
# claim took (``:seqs``), each line walked for its ``:followers``-th busy
# delivery after the head (``last``), the runs' rows up to it numbered, and the
# prefix of each run that is pending and due kept.
SQLITE_RUNS = f"""
    WITH heads AS MATERIALIZED (
        SELECT h.seq, h.subscription_id AS sub, h.ordering_key AS key, (
            SELECT g.seq FROM deliveries g INDEXED BY ix_deliveries_line
            WHERE {busy("g", "s")}
              AND g.subscription_id = h.subscription_id AND g.ordering_key = h.ordering_key
              AND g.seq > h.seq
            ORDER BY g.seq LIMIT 1 OFFSET :followers - 1) AS last
        FROM deliveries h JOIN subscriptions s ON s.id = h.subscription_id
        WHERE h.seq IN (SELECT value FROM json_each(:seqs)) AND h.ordering_key IS NOT NULL
          AND s.id NOT IN (SELECT value FROM json_each(:single))
    ), candidates AS MATERIALIZED (
        SELECT heads.seq AS head, f.seq,
               min(f.status = 'pending' AND f.next_attempt_at <= :now)
                   OVER (PARTITION BY heads.seq ORDER BY f.seq) AS ok,
               row_number() OVER (PARTITION BY heads.seq ORDER BY f.seq) AS n
        FROM heads
        JOIN subscriptions s ON s.id = heads.sub
        JOIN deliveries f INDEXED BY ix_deliveries_line
          ON f.subscription_id = heads.sub AND f.ordering_key = heads.key
        WHERE {busy("f", "s")} AND f.seq > heads.seq
          AND f.seq <= coalesce(heads.last, 9223372036854775807)
    )
    SELECT json_group_array(seq) FROM (
        SELECT seq FROM candidates WHERE ok ORDER BY n, seq LIMIT :room)
"""


# Each claimed delivery comes back with its event. PostgreSQL's UPDATE … FROM
# joins it. SQLite's RETURNING cannot join, and sqlite3 gives up the GIL for
# every row it steps through (and waits to get it back from the busy event
# loop), so SQLite claims in three statements of one row each: the candidates'
# seqs as a JSON array, the lease on those seqs, and the claimed deliveries with
# their events as one JSON array (an event's data is its stored text). Data
# longer than SQLITE_INLINE_DATA characters is read by a fourth statement, row
# by row, so that no claim comes near SQLite's limit on one string's size.
# The lease; a parked delivery taken leaves the parked index (``ready`` again,
# for when it goes back to pending), so that only pending deliveries are ever
# parked. The row changes anyway: no extra write.
_LEASED = """status = 'in_flight', lease_owner = :owner, lease_expires_at = :lease,
        ready = deliveries.ready OR deliveries.parked, parked = FALSE"""


def _claim(resuming: bool) -> dict[str, str]:
    """The claim statements, with the parked walk when ``resuming``."""
    pg_fresh, pg_oldest, pg_parked = _pg_walks()
    sqlite_fresh, sqlite_oldest, sqlite_parked = _sqlite_walks()
    taken = _TAKEN.format(rest=_REST_RESUMING if resuming else _REST)
    pg_parked = f"parked AS MATERIALIZED ({pg_parked})," if resuming else ""
    sqlite_parked = f", parked AS MATERIALIZED ({sqlite_parked})" if resuming else ""
    return {
        "postgresql": f"""
        WITH caught_up AS ({promote_sql(_FREED)}),
        fresh AS MATERIALIZED ({pg_fresh} FOR UPDATE OF d SKIP LOCKED),
        oldest AS MATERIALIZED ({pg_oldest} FOR UPDATE OF d SKIP LOCKED),{pg_parked}
        taken AS MATERIALIZED ({taken}),{_pg_runs()}
        UPDATE deliveries SET {_LEASED}
        FROM events e
        WHERE deliveries.seq = ANY(ARRAY(SELECT seq FROM taken UNION ALL SELECT seq FROM followers))
          AND e.id = deliveries.event_id
        RETURNING {_CLAIMED_COLUMNS}, {_EVENT_COLUMNS}
    """,
        "sqlite": f"""
        WITH fresh AS MATERIALIZED ({sqlite_fresh}), oldest AS MATERIALIZED ({sqlite_oldest})
        {sqlite_parked}
        SELECT json_group_array(seq), count(key) FROM ({taken})
    """,
    }


CLAIM, CLAIM_RESUMING = _claim(False), _claim(True)
SQLITE_LEASE = f"""
    UPDATE deliveries SET {_LEASED}
    WHERE seq IN (SELECT value FROM json_each(:seqs))
"""
SQLITE_INLINE_DATA = 65536
SQLITE_CLAIMED = f"""
    SELECT json_group_array(json_array(
        d.seq, d.id, d.event_id, d.subscription_id, d.ordering_key, d.attempts, d.round_attempts,
        e.id, e.seq, e.type, e.key,
        CASE WHEN length(e.data) <= {SQLITE_INLINE_DATA} THEN e.data END,
        e.schema_version, e.occurred_at, e.received_at, e.traceparent, e.tracestate))
    FROM deliveries d JOIN events e ON e.id = d.event_id
    WHERE d.seq IN (SELECT value FROM json_each(:seqs))
"""
SQLITE_CLAIMED_LARGE_DATA = f"""
    SELECT DISTINCT e.id, e.data
    FROM deliveries d JOIN events e ON e.id = d.event_id
    WHERE d.seq IN (SELECT value FROM json_each(:seqs)) AND length(e.data) > {SQLITE_INLINE_DATA}
"""


_PG_CLAIM = timed_sql(CLAIM["postgresql"], ("now", "lease"))
_PG_CLAIM_RESUMING = timed_sql(CLAIM_RESUMING["postgresql"], ("now", "lease"))
# PostgreSQL's plan cache ("auto") compares a generic plan's estimated cost
# with the custom plans' and, for the claim of a plain (unordered) backlog,
# kept planning it afresh every time: about 1.5 ms of the database's CPU a
# cycle, an eighth of all it spent on the cycle. The generic plan is
# index-served (tests/integration/test_delivery_claim_plan.py checks it), so
# the claim's transaction asks for it.
_PG_GENERIC_PLAN = "SET LOCAL plan_cache_mode = force_generic_plan"


async def claim_postgresql(
    conn: AsyncConnection, request: ClaimRequest, freed: Sequence[tuple[str, str]] = ()
) -> list[Work]:
    """Claim per ``request``, after readying again the heads of the lines
    ``freed`` (the lines this cycle's outcomes left, :func:`app.store.outcomes.left_lines`)."""
    await conn.exec_driver_sql(_PG_GENERIC_PLAN)
    params: dict[str, object] = {
        "freed_subs": [sub for sub, _ in freed],
        "freed_keys": [key for _, key in freed],
        "owner": request.owner,
        "now": request.now,
        "lease": request.lease_until,
        "limit": request.limit,
        "fresh": min(request.fresh, request.limit),
        "oldest": oldest_limit(request),
        "exclude": list(request.exclude) or ["-"],
        "crowding": list(request.crowding) or ["-"],
        "followers": max(0, request.run - 1),
        "single": list(request.single) or ["-"],
    }
    if request.resumed:
        params["resumed"] = list(request.resumed)
    result = await conn.execute(_PG_CLAIM_RESUMING if request.resumed else _PG_CLAIM, params)
    rows = sorted(result, key=lambda r: int(r[0]))
    return [Work(Claimed(*r[:7]), stored_event(r[2], *r[7:])) for r in rows]


def oldest_limit(request: ClaimRequest) -> int:
    """The oldest walk's LIMIT (0 leaves it out)."""
    return request.limit if request.oldest is None else min(request.oldest, request.limit)


def sqlite_claim(request: ClaimRequest) -> tuple[str, dict[str, object]]:
    """The claim statement with its parameters: times in their stored form, the
    excluded and crowding subscriptions as JSON arrays."""
    params: dict[str, object] = {
        "owner": request.owner,
        "now": sqlite_timestamp(request.now),
        "lease": sqlite_timestamp(request.lease_until),
        "limit": request.limit,
        "fresh": min(request.fresh, request.limit),
        "oldest": oldest_limit(request),
        "exclude": orjson.dumps(list(request.exclude)).decode(),
        "crowding": orjson.dumps(list(request.crowding)).decode(),
    }
    if request.resumed:
        params["resumed"] = orjson.dumps(list(request.resumed)).decode()
        return CLAIM_RESUMING["sqlite"], params
    return CLAIM["sqlite"], params


def sqlite_runs(
    request: ClaimRequest, params: dict[str, object], seqs: str, keyed: int
) -> dict[str, object] | None:
    """The parameters of :data:`SQLITE_RUNS` for the deliveries ``seqs`` (a JSON
    array) the claim took, ``keyed`` of them in a line, or None when it takes
    no runs."""
    if request.run <= 1 or not keyed:
        return None
    room = request.limit - len(orjson.loads(seqs))
    if room <= 0:
        return None
    return {
        "seqs": seqs,
        "now": params["now"],
        "followers": request.run - 1,
        "single": orjson.dumps(list(request.single)).decode(),
        "room": room,
    }


def stored_event(
    event_id: str,
    seq: int,
    event_type: str,
    key: str | None,
    data: str,
    schema_version: int | None,
    occurred_at: object,
    received_at: object,
    traceparent: str | None,
    tracestate: str | None,
) -> StoredEvent:
    received = stored_utc(received_at)
    assert received is not None
    return StoredEvent(
        seq,
        event_id,
        event_type,
        key,
        data,
        schema_version,
        stored_utc(occurred_at),
        received,
        traceparent,
        tracestate,
    )
