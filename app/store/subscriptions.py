"""Subscriptions: CRUD, secrets, and the circuit and status changes the worker makes.

The signing secrets and a broker destination's connection URL are stored sealed
(:data:`app.store.sealed.SUBSCRIPTIONS`): sealed here on every write; secrets are
handed out as :class:`~app.store.sealed.Sealed`, the URL opened on read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Text, bindparam, delete, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from app.domain.circuit import CircuitChange
from app.domain.delivery_status import OPEN_STATUSES
from app.domain.destinations import Destination, from_columns, masked_url
from app.domain.sealing import Keyring
from app.errors import SecretUnavailable
from app.store import schema
from app.store.database import Database
from app.store.lines import lines_moved_on
from app.store.notify import CHANGED, CHANNEL
from app.store.schema import DEFAULT_TENANT, UTCDateTime
from app.store.sealed import SUBSCRIPTIONS, Sealed

s = schema.subscriptions


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    url: str
    description: str | None
    event_types: list[str]
    secret: Sealed
    previous_secret: Sealed | None
    previous_secret_expires_at: datetime | None
    headers: dict[str, str]
    ordering: str
    on_dead_letter: str
    retry_schedule: list[float] | None
    timeout_ms: int | None
    max_in_flight: int
    rate_limit_per_second: float | None
    status: str
    disabled_reason: str | None
    consecutive_failures: int
    failing_since: datetime | None
    circuit_open_until: datetime | None
    created_at: datetime
    updated_at: datetime
    tenant_id: str = DEFAULT_TENANT
    filter: dict[str, Any] | None = None
    destination: Destination | None = None  # None: a webhook at ``url``
    format: str = "eventrelay"

    @property
    def destination_type(self) -> str:
        return "webhook" if self.destination is None else self.destination.type

    @property
    def target(self) -> str:
        """The URL a sender connects to (a broker URL may hold credentials)."""
        return self.url if self.destination is None else self.destination.url


def _subscription(row: Row[Any], keyring: Keyring) -> Subscription:
    r = row._mapping
    secret = SUBSCRIPTIONS.read(keyring, r["id"], "secret", r["secret"])
    assert secret is not None  # the column is NOT NULL
    previous = SUBSCRIPTIONS.read(keyring, r["id"], "previous_secret", r["previous_secret"])
    return Subscription(
        id=r["id"],
        tenant_id=r["tenant_id"],
        url=r["url"],
        description=r["description"],
        event_types=orjson.loads(r["event_types"]),
        secret=secret,
        previous_secret=previous,
        previous_secret_expires_at=r["previous_secret_expires_at"],
        headers=orjson.loads(r["headers"]),
        ordering=r["ordering"],
        on_dead_letter=r["on_dead_letter"],
        retry_schedule=orjson.loads(r["retry_schedule"]) if r["retry_schedule"] else None,
        timeout_ms=r["timeout_ms"],
        max_in_flight=r["max_in_flight"],
        rate_limit_per_second=r["rate_limit_per_second"],
        status=r["status"],
        disabled_reason=r["disabled_reason"],
        consecutive_failures=r["consecutive_failures"],
        failing_since=r["failing_since"],
        circuit_open_until=r["circuit_open_until"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        filter=orjson.loads(r["filter"]) if r["filter"] else None,
        destination=from_columns(r["url"], r["destination"], _opened_url(keyring, r)),
        format=r["format"],
    )


def _opened_url(keyring: Keyring, r: Any) -> str | None:
    """A broker destination's connection URL in the clear. Without the key that
    sealed it, the masked URL stands in: answers show it masked anyway, and the
    worker's attempts fail on it (and ``serve`` says at start which keys are
    missing)."""
    sealed = SUBSCRIPTIONS.read(keyring, r["id"], "destination_url", r["destination_url"])
    if sealed is None:
        return None
    try:
        return sealed.open()
    except SecretUnavailable:
        return None


_JSON_FIELDS = ("event_types", "headers", "retry_schedule", "filter")


def _to_row(values: Mapping[str, Any], keyring: Keyring, subscription_id: str) -> dict[str, Any]:
    row = dict(values)
    if "destination" in row:
        row.update(_destination_columns(row.pop("destination")))
    row = SUBSCRIPTIONS.seal(keyring, subscription_id, row)
    for name in _JSON_FIELDS:
        if name in row and row[name] is not None:
            row[name] = orjson.dumps(row[name]).decode()
    return row


def _destination_columns(destination: Destination) -> dict[str, Any]:
    """The one place a destination is written. A webhook keeps its URL in ``url``
    (as before destinations); a broker's connection URL, which may hold
    credentials, goes to ``destination_url`` alone (``url`` shows it masked)."""
    if destination.type == "webhook":
        return {"url": destination.url, "destination": None, "destination_url": None}
    return {
        "url": masked_url(destination.url),
        "destination": orjson.dumps({"type": destination.type, **destination.config()}).decode(),
        "destination_url": destination.url,
    }


async def create(
    conn: AsyncConnection, values: Mapping[str, Any], *, keyring: Keyring
) -> Subscription:
    """Within the caller's transaction."""
    await conn.execute(s.insert().values(**_to_row(values, keyring, values["id"])))
    row = (await conn.execute(select(s).where(s.c.id == values["id"]))).one()
    return _subscription(row, keyring)


def _own(tenant_id: str, subscription_id: str) -> tuple[ColumnElement[bool], ...]:
    """The subscription, if it is the tenant's: another tenant's is not there."""
    return (s.c.id == subscription_id, s.c.tenant_id == tenant_id)


async def get(db: Database, tenant_id: str, subscription_id: str) -> Subscription | None:
    async with db.read() as conn:
        row = (await conn.execute(select(s).where(*_own(tenant_id, subscription_id)))).first()
    return _subscription(row, db.keyring) if row else None


async def get_many(db: Database, ids: Iterable[str]) -> dict[str, Subscription]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    async with db.read() as conn:
        rows = await conn.execute(select(s).where(s.c.id.in_(wanted)))
        return {r.id: _subscription(r, db.keyring) for r in rows}


async def list_page(
    db: Database, tenant_id: str, *, after_id: str | None, limit: int
) -> tuple[list[Subscription], str | None]:
    query = select(s).where(s.c.tenant_id == tenant_id).order_by(s.c.id).limit(limit + 1)
    if after_id is not None:
        query = query.where(s.c.id > after_id)
    async with db.read() as conn:
        page = [_subscription(r, db.keyring) for r in await conn.execute(query)]
    if len(page) > limit:
        return page[:limit], page[limit - 1].id
    return page, None


async def patch(
    conn: AsyncConnection,
    tenant_id: str,
    subscription_id: str,
    values: Mapping[str, Any],
    *,
    keyring: Keyring,
) -> Subscription | None:
    """Within the caller's transaction: update fields (None: no such subscription)."""
    row_values = _to_row(values, keyring, subscription_id)
    result = await conn.execute(
        update(s).where(*_own(tenant_id, subscription_id)).values(**row_values)
    )
    if not result.rowcount:
        return None
    row = (await conn.execute(select(s).where(s.c.id == subscription_id))).one()
    return _subscription(row, keyring)


async def rotate_secret(
    conn: AsyncConnection,
    tenant_id: str,
    subscription_id: str,
    *,
    secret: str,
    previous_expires_at: datetime,
    now: datetime,
    keyring: Keyring,
) -> bool:
    """Within the caller's transaction: ``secret`` signs from now on; the one it
    replaces signs too until ``previous_expires_at``. False when there is no such
    subscription; SecretUnavailable when the current secret cannot be opened.

    The row is locked before it is read (``FOR NO KEY UPDATE``, as the update
    itself would; SQLite's writer is alone), so concurrent rotations, and
    ``rotate-encryption-key``, queue on it and each keeps the secret the one
    before it set. The old secret is opened and sealed again for its new column
    (a sealed value is bound to its column).
    """
    locked = select(s.c.secret).where(*_own(tenant_id, subscription_id))
    locked = locked.with_for_update(key_share=True)
    stored = (await conn.execute(locked)).scalar_one_or_none()
    if stored is None:
        return False
    previous = SUBSCRIPTIONS.open(keyring, subscription_id, "secret", stored)
    secrets = {"secret": secret, "previous_secret": previous}
    await conn.execute(
        update(s)
        .where(*_own(tenant_id, subscription_id))
        .values(
            **SUBSCRIPTIONS.seal(keyring, subscription_id, secrets),
            previous_secret_expires_at=previous_expires_at,
            updated_at=now,
        )
    )
    return True


async def announce_change(conn: AsyncConnection, subscription_id: str) -> None:
    """Within the caller's transaction: workers in other processes (PostgreSQL) drop
    their copy of the subscription at commit and, on resume, claim."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": f"{CHANGED}{subscription_id}"},
        )


async def promote_all_lines(conn: AsyncConnection, subscription_id: str) -> None:
    """Within the caller's transaction: every line of the subscription moves on to
    the head its rules now allow (after its ordering or dead-letter rule changed)."""
    d = schema.deliveries
    rows = await conn.execute(
        select(d.c.ordering_key)
        .where(d.c.subscription_id == subscription_id, d.c.ordering_key.is_not(None))
        .where(d.c.status.in_(OPEN_STATUSES))
        .distinct()
    )
    await lines_moved_on(conn, [(subscription_id, r[0]) for r in rows])


async def remove(conn: AsyncConnection, tenant_id: str, subscription_id: str) -> bool:
    """Within the caller's transaction: the subscription, its deliveries (their
    foreign key cascades) and their attempts (which have none, schema.attempts)."""
    d, a = schema.deliveries, schema.attempts
    # A delivery's tenant is its subscription's: another tenant's are not touched.
    theirs = select(d.c.id).where(
        d.c.subscription_id == subscription_id, d.c.tenant_id == tenant_id
    )
    await conn.execute(delete(a).where(a.c.delivery_id.in_(theirs.scalar_subquery())))
    result = await conn.execute(delete(s).where(*_own(tenant_id, subscription_id)))
    return bool(result.rowcount)


@dataclass(frozen=True, slots=True)
class CircuitUpdate:
    subscription_id: str
    consecutive_failures: int
    failing_since: datetime | None
    circuit_open_until: datetime | None
    disable_reason: str | None  # set: the subscription becomes disabled
    change: CircuitChange | None = None  # the circuit opened or closed (an operator event)


# One statement for both dialects: a circuit update that disables the
# subscription (``:disable`` set) also sets its status, reason and update time.
CIRCUIT_SQL = """
    UPDATE subscriptions SET
        consecutive_failures = :failures,
        failing_since = :failing_since,
        circuit_open_until = :open_until,
        status = CASE WHEN :disable IS NULL THEN status ELSE 'disabled' END,
        disabled_reason = COALESCE(:disable, disabled_reason),
        updated_at = CASE WHEN :disable IS NULL THEN updated_at ELSE :now END
    WHERE id = :id
"""
_CIRCUIT = text(CIRCUIT_SQL).bindparams(
    *(bindparam(name, type_=UTCDateTime()) for name in ("failing_since", "open_until", "now")),
    bindparam("disable", type_=Text()),
)


async def apply_circuit(
    conn: AsyncConnection, updates: Iterable[CircuitUpdate], now: datetime
) -> None:
    """Within the caller's transaction (the worker's completion write). In ID
    order, as everything that locks several subscription rows locks them (see
    :func:`app.store.sealed.reseal`), so two such transactions never wait on
    each other in a cycle."""
    for u in sorted(updates, key=lambda u: u.subscription_id):
        await conn.execute(_CIRCUIT, circuit_params(u, now))


def circuit_params(u: CircuitUpdate, now: datetime) -> dict[str, Any]:
    """The parameters of :data:`CIRCUIT_SQL` for one update."""
    return {
        "id": u.subscription_id,
        "failures": u.consecutive_failures,
        "failing_since": u.failing_since,
        "open_until": u.circuit_open_until,
        "disable": u.disable_reason,
        "now": now,
    }
