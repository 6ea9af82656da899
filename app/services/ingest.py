"""Accepting events: validate, then store through the group committer.

Nothing is answered before the transaction holding the event, its delivery
rows and its idempotency key has been committed to disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from app.domain import jsonbody, tracecontext
from app.domain.cloudevents import MappedEvent
from app.domain.events import (
    BatchItemInput,
    EventInput,
    NewEvent,
    parse_batch,
    parse_event,
)
from app.domain.idempotency import Accepted, KeyReused, UnitResult, fingerprint, parse_key
from app.domain.ids import new_id
from app.domain.tenants import DEFAULT_TENANT
from app.errors import BadRequest, FieldError, StoreUnavailable, ValidationFailed
from app.services.group_commit import GroupCommitter
from app.services.schemas import SchemaService
from app.services.tenants import Tenant, TenantService
from app.store import ingest as store
from app.store.database import Database
from app.tracing import IngestSpan, RequestTrace, Tracer

log = logging.getLogger(__name__)

# The tenant of callers that name none (tests, tools): ``default``, no limits.
DEFAULT = Tenant(DEFAULT_TENANT, "Default", {}, None, None, "active", datetime.min, datetime.min)


class IngestService:
    def __init__(
        self,
        db: Database,
        *,
        require_idempotency_key: bool,
        idempotency_ttl: timedelta,
        writers: int,
        on_flush: Callable[[int], None] | None = None,
        on_accepted: Callable[[int, int], None] | None = None,
        on_deliveries: Callable[[], None] | None = None,
        schemas: SchemaService | None = None,
        limits: TenantService | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._db = db
        self._limits = limits
        self._schemas = schemas
        self._require_key = require_idempotency_key
        self._ttl = idempotency_ttl
        self._on_accepted = on_accepted
        self._on_deliveries = on_deliveries
        self._committer: GroupCommitter[list[NewEvent], UnitResult] = GroupCommitter(
            self._flush, writers=writers, on_flush=on_flush, tracer=tracer
        )

    def start(self) -> None:
        self._committer.start()

    async def stop(self) -> None:
        await self._committer.stop()

    async def ingest_one(
        self,
        document: Any,
        idempotency_key: str | None,
        tenant: Tenant = DEFAULT,
        trace: RequestTrace | None = None,
    ) -> Accepted:
        """Store one event (``POST /v1/events``) in ``tenant``; raises on invalid input.
        ``trace`` is the request's trace context (a new trace without one)."""
        if idempotency_key is None and self._require_key:
            raise BadRequest("the Idempotency-Key header is required")
        event = parse_event(document)
        trace = trace or _new_trace()
        (version,) = await self._schema_versions([(event, "/data", "/schema_version")])
        (accepted,) = await self._submit(
            tenant,
            [_new_event(event, idempotency_key, version, tenant.id, trace.context)],
            _header_key_reused,
            trace.span,
        )
        return accepted

    async def ingest_batch(
        self, document: Any, tenant: Tenant = DEFAULT, trace: RequestTrace | None = None
    ) -> list[Accepted]:
        """Store every event of a batch in one transaction, or none of them; each
        event carries the request's trace context."""
        batch = parse_batch(document)
        trace = trace or _new_trace()
        keys = self._batch_keys(batch.events)
        versions = await self._schema_versions(
            [
                (item, f"/events/{i}/data", f"/events/{i}/schema_version")
                for i, item in enumerate(batch.events)
            ]
        )
        return await self._submit(
            tenant,
            [
                _new_event(item, key, version, tenant.id, trace.context)
                for item, key, version in zip(batch.events, keys, versions, strict=True)
            ],
            _batch_keys_reused,
            trace.span,
        )

    async def ingest_cloudevent(
        self,
        event: MappedEvent,
        idempotency_key: str | None,
        tenant: Tenant = DEFAULT,
        trace: RequestTrace | None = None,
    ) -> Accepted:
        """Store one CloudEvent, keyed by the header's key or else its (source, id);
        its own ``traceparent`` extension, when valid, is its trace context."""
        trace = trace or _new_trace()
        (version,) = await self._schema_versions([(event.event, event.data_loc, event.version_loc)])
        key = idempotency_key or event.pair_key
        context = _cloudevent_trace(event, trace)
        new = _new_event(event.event, key, version, tenant.id, context, event.attributes)
        reused = _header_key_reused if idempotency_key else _pairs_reused([event])
        (accepted,) = await self._submit(tenant, [new], reused, trace.span)
        return accepted

    async def ingest_cloudevent_batch(
        self,
        events: list[MappedEvent],
        tenant: Tenant = DEFAULT,
        trace: RequestTrace | None = None,
    ) -> list[Accepted]:
        """Store a CloudEvents batch atomically, each event keyed by its (source, id)."""
        trace = trace or _new_trace()
        versions = await self._schema_versions(
            [(m.event, m.data_loc, m.version_loc) for m in events]
        )
        new = [
            _new_event(
                m.event, m.pair_key, version, tenant.id, _cloudevent_trace(m, trace), m.attributes
            )
            for m, version in zip(events, versions, strict=True)
        ]
        return await self._submit(tenant, new, _pairs_reused(events), trace.span)

    async def _schema_versions(self, items: list[tuple[EventInput, str, str]]) -> list[int | None]:
        """Each event's schema version, its data validated; 422 naming every failure.

        Runs before the group committer, so invalid events never reach a transaction.
        """
        schemas = self._schemas
        if schemas is None or all(
            schemas.unschematized(e.type, e.schema_version) for e, _, _ in items
        ):
            return [event.schema_version for event, _, _ in items]
        versions: list[int | None] = []
        errors: list[FieldError] = []
        for event, data_loc, version_loc in items:
            version, problems = await schemas.check(
                event.type, event.schema_version, event.data, data_loc, version_loc
            )
            versions.append(version)
            errors += problems
        if errors:
            raise ValidationFailed("the event does not fit its type's schemas", errors)
        return versions

    def _batch_keys(self, items: list[BatchItemInput]) -> list[str | None]:
        """Each item's key, by the same rules as the Idempotency-Key header."""
        keys: list[str | None] = []
        errors: list[FieldError] = []
        for index, item in enumerate(items):
            loc = f"/events/{index}/idempotency_key"
            if item.idempotency_key is None:
                if self._require_key:
                    errors.append(FieldError(loc, "an idempotency_key is required"))
                keys.append(None)
                continue
            try:
                keys.append(parse_key(item.idempotency_key))
            except BadRequest as exc:
                errors.append(FieldError(loc, exc.detail))
        if errors:
            raise ValidationFailed("some batch items have no usable idempotency_key", errors)
        return keys

    async def _submit(
        self,
        tenant: Tenant,
        events: list[NewEvent],
        refusal: Callable[[KeyReused], ValidationFailed],
        span: IngestSpan | None = None,
    ) -> list[Accepted]:
        """Store one request's events; ``refusal`` names the parts of the request
        whose key was already used with a different body. The tenant's ingest
        limit is taken first (429, nothing stored); what was not stored is given back."""
        limits = self._limits
        if limits is not None:
            limits.admit(tenant, len(events))
        try:
            result = await self._committer.submit(events, span)
        except BaseException:
            if limits is not None:
                limits.give_back(tenant, len(events))
            raise
        if isinstance(result, KeyReused):
            if limits is not None:
                limits.give_back(tenant, len(events))
            raise refusal(result)
        if limits is not None:
            limits.give_back(tenant, sum(a.replayed for a in result))
        return result

    async def _flush(self, units: Sequence[list[NewEvent]]) -> list[UnitResult]:
        now = datetime.now(UTC)
        try:
            outcome = await store.ingest(self._db, units, ttl=self._ttl, now=now)
        except StoreUnavailable:
            raise
        except Exception:
            if len(units) == 1:
                raise
            # One request must not sink the others that shared its transaction.
            log.exception("a shared ingest transaction failed; retrying its requests one by one")
            return [await self._flush_alone(unit, now) for unit in units]
        self._stored(outcome.results, outcome.deliveries)
        return outcome.results

    async def _flush_alone(self, unit: list[NewEvent], now: datetime) -> UnitResult:
        outcome = await store.ingest(self._db, [unit], ttl=self._ttl, now=now)
        self._stored(outcome.results, outcome.deliveries)
        return outcome.results[0]

    def _stored(self, results: list[UnitResult], deliveries: int) -> None:
        """Count what a committed flush accepted (once per flush, not per request)
        and wake the workers if it made deliveries."""
        if self._on_accepted is not None:
            answers = [a for r in results if not isinstance(r, KeyReused) for a in r]
            replayed = sum(a.replayed for a in answers)
            self._on_accepted(len(answers) - replayed, replayed)
        if deliveries and self._on_deliveries is not None:
            self._on_deliveries()


_KEY_REUSED = "this idempotency key was already used with a different body"


def _header_key_reused(_: KeyReused) -> ValidationFailed:
    return ValidationFailed(
        "the Idempotency-Key was already used with a different body", [FieldError("/", _KEY_REUSED)]
    )


def _batch_keys_reused(reused: KeyReused) -> ValidationFailed:
    return ValidationFailed(
        "the Idempotency-Key was already used with a different body",
        [FieldError(f"/events/{i}/idempotency_key", _KEY_REUSED) for i in reused.items],
    )


def _pairs_reused(events: list[MappedEvent]) -> Callable[[KeyReused], ValidationFailed]:
    """Without an Idempotency-Key header, a CloudEvent's key is its (source, id)."""

    def refusal(reused: KeyReused) -> ValidationFailed:
        msg = "this (source, id) was already used with a different event"
        return ValidationFailed(
            "a (source, id) was already used with a different event",
            [FieldError(events[i].id_loc, msg) for i in reused.items],
        )

    return refusal


def _new_trace() -> RequestTrace:
    return RequestTrace(tracecontext.new_trace())


def _cloudevent_trace(event: MappedEvent, trace: RequestTrace) -> tracecontext.TraceContext:
    """A CloudEvent's own trace context (the Distributed Tracing extension's
    ``traceparent`` and ``tracestate``) when valid, else the request's."""
    own = event.attributes.get("traceparent")
    if own is None:
        return trace.context
    return tracecontext.parse(own, event.attributes.get("tracestate")) or trace.context


def _new_event(
    event: EventInput,
    idempotency_key: str | None,
    schema_version: int | None,
    tenant_id: str,
    trace: tracecontext.TraceContext,
    cloudevent: dict[str, str] | None = None,
) -> NewEvent:
    """The event to store; ``schema_version`` is the resolved one, the request's counts
    for the fingerprint (a replay must match after a newer version is registered)."""
    received_at = datetime.now(UTC)
    occurred_at = event.occurred_at.astimezone(UTC) if event.occurred_at else None
    meaning = {
        "type": event.type,
        "key": event.key,
        "data": event.data,
        "schema_version": event.schema_version,
        "occurred_at": occurred_at.isoformat() if occurred_at else None,
    }
    if cloudevent is not None:
        meaning["cloudevent"] = cloudevent
    return NewEvent(
        id=new_id("evt"),
        type=event.type,
        key=event.key,
        data_json=jsonbody.dumps(event.data),
        schema_version=schema_version,
        occurred_at=occurred_at,
        received_at=received_at,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint(meaning) if idempotency_key is not None else None,
        tenant_id=tenant_id,
        traceparent=trace.traceparent,
        tracestate=trace.tracestate,
    )


__all__ = ["Accepted", "BatchItemInput", "IngestService"]
