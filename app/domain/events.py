"""What an event is on the way in: the accepted fields and their rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from app.domain.tenants import DEFAULT_TENANT
from app.errors import FieldError, ValidationFailed

TYPE_PATTERN = r"^[A-Za-z0-9._:/-]{1,200}$"
# Operator events' types (app.domain.operator_events); no client may use them.
RESERVED_PREFIX = "eventrelay."


def is_reserved(event_type: str) -> bool:
    return event_type.startswith(RESERVED_PREFIX)


def client_type(event_type: str) -> str:
    """A validator: a client's event type may not be reserved."""
    if is_reserved(event_type):
        raise ValueError(f"types starting with {RESERVED_PREFIX!r} are reserved (operator events)")
    return event_type


ClientType = Annotated[
    str, Field(min_length=1, max_length=200, pattern=TYPE_PATTERN), AfterValidator(client_type)
]


class EventInput(BaseModel):
    """The body of ``POST /v1/events``."""

    model_config = ConfigDict(extra="forbid", strict=False)

    type: ClientType
    key: str | None = Field(default=None, min_length=1, max_length=200)
    data: Any = None
    schema_version: int | None = Field(default=None, ge=1, le=2_147_483_647)
    occurred_at: AwareDatetime | None = None


class BatchItemInput(EventInput):
    """One item of ``POST /v1/events/batch``: an event plus its own idempotency key."""

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[BatchItemInput] = Field(min_length=1, max_length=500)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An accepted event, ready for the store."""

    id: str
    type: str
    key: str | None
    data_json: str
    schema_version: int | None
    occurred_at: datetime | None
    received_at: datetime
    idempotency_key: str | None
    fingerprint: str | None
    tenant_id: str = DEFAULT_TENANT
    traceparent: str | None = None  # W3C trace context (app.domain.tracecontext)
    tracestate: str | None = None

    @property
    def scoped_key(self) -> tuple[str, str] | None:
        """The idempotency key as stored: keys are per tenant."""
        key = self.idempotency_key
        return None if key is None else (self.tenant_id, key)


def pointer(loc: tuple[int | str, ...], prefix: str = "") -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
    return prefix + "".join(f"/{p}" for p in parts)


def validation_failed(exc: ValidationError, prefix: str = "") -> ValidationFailed:
    errors = [FieldError(pointer(tuple(e["loc"]), prefix), e["msg"]) for e in exc.errors()]
    return ValidationFailed("the request body is invalid", errors)


def parse_event(document: Any) -> EventInput:
    if not isinstance(document, dict):
        raise ValidationFailed("the body must be a JSON object", [FieldError("/", "not an object")])
    try:
        return EventInput.model_validate(document)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def parse_batch(document: Any) -> BatchInput:
    if not isinstance(document, dict):
        raise ValidationFailed("the body must be a JSON object", [FieldError("/", "not an object")])
    try:
        return BatchInput.model_validate(document)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is not UTC:  # receipt times are UTC already: no copy for them
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def accepted_body(event: NewEvent, deliveries: int) -> str:
    """The 202 answer for an accepted event; stored verbatim for idempotent replays."""
    return orjson.dumps(
        {
            "id": event.id,
            "type": event.type,
            "key": event.key,
            "received_at": rfc3339(event.received_at),
            "schema_version": event.schema_version,
            "deliveries": deliveries,
        }
    ).decode()
