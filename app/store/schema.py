"""Tables. Alembic migrations must produce exactly this (a test checks it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A 64-bit sequence on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid.
Sequence64 = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out, whatever the dialect keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return stored_utc(value)


def stored_utc(value: object) -> datetime | None:
    """A stored time as :class:`UTCDateTime` returns it: from SQLite's text (raw SQL,
    aggregates) or a driver's datetime, always timezone-aware UTC."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        raise TypeError(f"not a stored time: {value!r}")
    if moment.tzinfo is UTC:  # asyncpg's times: no copy (a claim reads two per delivery)
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def sqlite_timestamp(value: datetime) -> str:
    """``value`` as :class:`UTCDateTime` stores it on SQLite, for statements that
    bypass SQLAlchemy's bind processing (``2026-11-26 05:44:20.123456``, UTC)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


DEFAULT_TENANT = "default"

# A tenant is one customer of the installation. ``status`` is ``active``, or
# ``deleting`` while its rows are removed in the background (the row goes last,
# so its ID stays taken until then).
tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("metadata", Text, nullable=False),  # JSON object of strings
    Column("ingest_rate_per_second", Float, nullable=True),
    Column("max_subscriptions", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)


def _tenant_column() -> Column[str]:
    # Rows made before tenants existed belong to the default tenant.
    return Column(
        "tenant_id", String(64), nullable=False, server_default=text(f"'{DEFAULT_TENANT}'")
    )


tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=True),  # NULL: a global token
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scope", String(16), nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("seq", Sequence64, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    _tenant_column(),
    Column("type", String(200), nullable=False),
    Column("key", String(200), nullable=True),
    Column("data", Text, nullable=False),
    Column("schema_version", Integer, nullable=True),
    Column("occurred_at", UTCDateTime, nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    # W3C trace context: what the event arrived in, or the trace begun at ingest.
    Column("traceparent", String(55), nullable=True),
    Column("tracestate", String(512), nullable=True),
    Index("ix_events_tenant_id_seq", "tenant_id", "seq"),
    Index("ix_events_tenant_id_type_seq", "tenant_id", "type", "seq"),
    Index("ix_events_tenant_id_key_seq", "tenant_id", "key", "seq"),
    Index("ix_events_received_at", "received_at"),
)

# One row per remembered Idempotency-Key, written in the same transaction as
# its event, so a key can never exist without its answer (no "in flight" rows).
# Keys are per tenant: the same key in two tenants is two events.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(64), primary_key=True, server_default=text(f"'{DEFAULT_TENANT}'")),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("event_id", String(32), nullable=False),
    Column("response_status", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(32), primary_key=True),
    _tenant_column(),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("event_types", Text, nullable=False),  # JSON array of patterns
    # Signing secrets, sealed when EVENTRELAY_ENCRYPTION_KEYS is set (app/store/sealed.py).
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text, nullable=True),
    Column("previous_secret_expires_at", UTCDateTime, nullable=True),
    Column("headers", Text, nullable=False),  # JSON object
    Column("ordering", String(8), nullable=False),
    Column("on_dead_letter", String(8), nullable=False),
    Column("retry_schedule", Text, nullable=True),  # JSON array; null = the default
    Column("timeout_ms", Integer, nullable=True),
    Column("max_in_flight", Integer, nullable=False),
    Column("rate_limit_per_second", Float, nullable=True),
    Column("status", String(16), nullable=False),
    Column("disabled_reason", Text, nullable=True),
    Column("consecutive_failures", Integer, nullable=False, server_default=text("0")),
    Column("circuit_open_until", UTCDateTime, nullable=True),
    Column("failing_since", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("filter", Text, nullable=True),  # JSON object: a content filter; null = none
    # A broker destination (NULL: a webhook at ``url``): its settings as JSON,
    # and apart from them the connection URL, which may hold credentials
    # (``url`` then holds it with the password masked).
    Column("destination", Text, nullable=True),
    Column("destination_url", Text, nullable=True),
    Column("format", String(16), nullable=False, server_default=text("'eventrelay'")),
    Index("ix_subscriptions_tenant_id_id", "tenant_id", "id"),
)

# Ordered by ``seq``, a database sequence: IDs minted by different processes in
# the same millisecond say nothing about order.
#
# ``ready`` marks the head of its (subscription, ordering key) line: the only
# pending delivery of that line the claim query looks at. It keeps the claim
# query's scan short; the ordering rule itself is re-checked in the query.
UNFINISHED = "status IN ('pending', 'in_flight', 'dead')"
LINED = f"{UNFINISHED} AND ordering_key IS NOT NULL"  # a delivery in a line, unfinished
CLAIMABLE = "status = 'pending' AND ready"
DEAD = "status = 'dead'"
PARKED = "parked"
deliveries = Table(
    "deliveries",
    metadata,
    Column("seq", Sequence64, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column(
        "event_id",
        String(32),
        ForeignKey("events.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "subscription_id",
        String(32),
        ForeignKey("subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # The subscription's (and the event's) tenant, so per-tenant lists, the DLQ
    # and counts need no join.
    _tenant_column(),
    Column("event_type", String(200), nullable=False),
    # The event's key when the subscription orders by key, else NULL (no ordering).
    Column("ordering_key", String(200), nullable=True),
    Column("status", String(16), nullable=False),
    Column("ready", Boolean, nullable=False),
    # Set (with ``ready`` cleared) on a due delivery of a paused, disabled or
    # circuit-open subscription, out of the claim index; cleared (``ready``
    # restored) when the subscription may be sent to again (store/parking.py).
    Column("parked", Boolean, nullable=False, server_default=text("false")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # Attempts since the last redrive: the position in the retry schedule.
    Column("round_attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(40), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("dead_lettered_at", UTCDateTime, nullable=True),
    # Every status change writes an entry in each index whose key or predicate
    # the new row version satisfies, so the status-driven indexes cover only
    # the rows that need them (migration 0009).
    Index("ix_deliveries_event_id", "event_id"),
    # On PostgreSQL the unfinished rows only; SQLite keeps every row here, as it
    # cannot match a query's ``status = 'pending'`` to the IN-list predicate.
    Index(
        "ix_deliveries_status_subscription_id",
        "status",
        "subscription_id",
        postgresql_where=text(UNFINISHED),
    ),
    Index(
        "ix_deliveries_claim",
        "next_attempt_at",
        "seq",
        postgresql_where=text(CLAIMABLE),
        sqlite_where=text(CLAIMABLE),
    ),
    # Parked deliveries by subscription: no entry for any other row, so ingest
    # and the claim pay nothing for it (migration 0011).
    Index(
        "ix_deliveries_parked",
        "subscription_id",
        "seq",
        postgresql_where=text(PARKED),
        sqlite_where=text(PARKED),
    ),
    Index(
        "ix_deliveries_line",
        "subscription_id",
        "ordering_key",
        "seq",
        postgresql_where=text(LINED),
        sqlite_where=text(LINED),
    ),
    Index(
        "ix_deliveries_dead",
        "seq",
        postgresql_where=text(DEAD),
        sqlite_where=text(DEAD),
    ),
    # A tenant's dead letters (partial indexes on dead rows cost ingest nothing).
    Index(
        "ix_deliveries_dead_tenant",
        "tenant_id",
        "seq",
        postgresql_where=text(DEAD),
        sqlite_where=text(DEAD),
    ),
    Index(
        "ix_deliveries_dead_subscription",
        "subscription_id",
        "seq",
        postgresql_where=text(DEAD),
        sqlite_where=text(DEAD),
    ),
    Index(
        "ix_deliveries_dead_type",
        "tenant_id",
        "event_type",
        "seq",
        postgresql_where=text(DEAD),
        sqlite_where=text(DEAD),
    ),
    Index(
        "ix_deliveries_succeeded",
        "completed_at",
        postgresql_where=text("status = 'succeeded'"),
        sqlite_where=text("status = 'succeeded'"),
    ),
    # The events list's ``delivery_status=discarded`` on PostgreSQL, whose
    # status index leaves finished rows out.
    Index(
        "ix_deliveries_discarded",
        "event_id",
        postgresql_where=text("status = 'discarded'"),
        sqlite_where=text("status = 'discarded'"),
    ),
)

# An attempt's delivery is not a foreign key (migration 0010): the worker
# writes the row in the statement that has just updated that delivery, and a
# check per row was a lookup and a row lock each. Whatever deletes deliveries
# deletes their attempts first, in the same transaction (store/retention.py,
# subscriptions.py ``remove``, tenants.py ``remove_batch``).
attempts = Table(
    "attempts",
    metadata,
    Column("seq", Sequence64, primary_key=True, autoincrement=True),
    Column("delivery_id", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("request_headers", Text, nullable=True),  # JSON object; null before 0006
    Index("ix_attempts_delivery_id_attempt", "delivery_id", "attempt"),
)

# Event types and their JSON Schema versions. Versions are immutable and
# numbered per type from 1; ``schema`` is the canonical JSON text.
event_types = Table(
    "event_types",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("description", Text, nullable=True),
    Column("compatibility", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

event_schemas = Table(
    "event_schemas",
    metadata,
    Column(
        "event_type",
        String(200),
        ForeignKey("event_types.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("schema", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Console sign-ins. The cookie holds a random session ID; only its SHA-256 is
# stored, so a copy of the database signs nobody in. A session lasts until
# ``expires_at`` and only while its token is not revoked.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("token_id", String(32), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("tenant_id", String(64), nullable=True),
    Column("portal", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_console_sessions_expires_at", "expires_at"),
)

# Keys the console signs with (the tenant portal's links), made on first use
# and shared by every process through the database.
console_keys = Table(
    "console_keys",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
