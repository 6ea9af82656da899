"""Response and request models of the admin API, for validation and OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from app.domain.delivery_status import DeliveryStatus
from app.domain.event_schemas import Compatibility
from app.domain.jsonbody import unstorable_strings
from app.domain.portal import EXPIRES_DEFAULT, EXPIRES_MAX, EXPIRES_MIN
from app.domain.tokens import Scope


def _storable(value: str) -> str:
    if next(iter(unstorable_strings(value, "")), None) is not None:
        raise ValueError("must not contain \\u0000 or lone surrogates")
    return value


StorableStr = Annotated[str, AfterValidator(_storable)]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None


class EventAccepted(BaseModel):
    id: str
    type: str
    key: str | None
    received_at: str
    schema_version: int | None
    deliveries: int


class BatchItemAccepted(BaseModel):
    id: str
    replayed: bool


class BatchAccepted(BaseModel):
    items: list[BatchItemAccepted]


class DeliveryOut(BaseModel):
    id: str
    subscription_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None


class EventOut(BaseModel):
    id: str
    type: str
    key: str | None
    data: Any
    schema_version: int | None
    occurred_at: str | None
    received_at: str
    deliveries: list[DeliveryOut]


class EventSummary(BaseModel):
    id: str
    type: str
    key: str | None
    data: Any
    schema_version: int | None
    occurred_at: str | None
    received_at: str


class EventPage(BaseModel):
    items: list[EventSummary]
    next_cursor: str | None


class DeliveryCounts(BaseModel):
    pending: int
    in_flight: int
    succeeded: int
    dead: int
    discarded: int


class StatsOut(BaseModel):
    events: int
    subscriptions: int
    deliveries: DeliveryCounts


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope
    description: StorableStr | None = Field(default=None, max_length=1000)
    tenant_id: StorableStr | None = Field(
        default=None,
        max_length=64,
        description="Confine the token to this tenant (a tenant's own admin: always its own).",
    )


class TokenCreated(BaseModel):
    id: str
    token: str
    scope: Scope
    tenant_id: str | None = None


class TenantOut(BaseModel):
    id: str
    name: str
    metadata: dict[str, str]
    ingest_rate_per_second: float | None
    max_subscriptions: int | None
    created_at: str
    updated_at: str


class TenantDetail(TenantOut):
    stats: StatsOut


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None


class TokenOut(BaseModel):
    id: str
    scope: Scope
    description: str | None
    created_at: str
    tenant_id: str | None


class TokenPage(BaseModel):
    items: list[TokenOut]
    next_cursor: str | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    migration: str | None


class SubscriptionOut(BaseModel):
    id: str
    url: str | None = Field(description="the webhook URL; null for a broker destination")
    destination: dict[str, Any] = Field(
        description="where events go; a broker URL's password is shown as ***"
    )
    format: Literal["eventrelay", "cloudevents"]
    description: str | None
    event_types: list[str]
    headers: dict[str, str]
    ordering: Literal["key", "none"]
    on_dead_letter: Literal["skip", "block"]
    retry_schedule: list[float]
    timeout_ms: int
    max_in_flight: int
    rate_limit_per_second: float | None
    status: Literal["active", "paused", "disabled"]
    disabled_reason: str | None
    created_at: str
    updated_at: str
    filter: dict[str, Any] | None = Field(
        default=None, description="the content filter an event must match; null: none"
    )


class SubscriptionCreated(SubscriptionOut):
    secret: str


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]
    next_cursor: str | None


class SecretOut(BaseModel):
    secret: str


class AttemptOut(BaseModel):
    attempt: int
    started_at: str
    duration_ms: int
    status_code: int | None
    error: str | None
    response_body: str | None
    request_headers: dict[str, str] | None = Field(
        description="The headers the attempt sent (null for attempts recorded before they were)"
    )


class EventAttemptOut(AttemptOut):
    delivery_id: str


class EventAttempts(BaseModel):
    items: list[EventAttemptOut]


class DeadLetterOut(BaseModel):
    id: str
    event_id: str
    subscription_id: str
    event_type: str
    key: str | None
    attempts: int
    last_status_code: int | None
    last_error: str | None
    dead_lettered_at: str | None


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    next_cursor: str | None


class DeadLetterDetailOut(BaseModel):
    """A dead letter with its whole event; ``attempts`` lists them instead of counting."""

    id: str
    event_id: str
    subscription_id: str
    event_type: str
    key: str | None
    last_status_code: int | None
    last_error: str | None
    dead_lettered_at: str | None
    event: EventSummary
    attempts: list[AttemptOut]


class RedriveFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription_id: str | None = Field(default=None, max_length=64)
    event_type: str | None = Field(default=None, max_length=200)
    # Not in the contract's minimum: lets a client redrive in steps (the CLI's progress bar).
    limit: int | None = Field(default=None, ge=1, le=100_000)


class RedriveCount(BaseModel):
    redriven: int


class Accepted(BaseModel):
    status: str


class ReplayWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime
    until: AwareDatetime | None = None


class ReplayCount(BaseModel):
    replayed: int


class EventTypeOut(BaseModel):
    name: str
    description: str | None
    compatibility: Compatibility
    latest_version: int | None
    created_at: str


class EventTypePage(BaseModel):
    items: list[EventTypeOut]
    next_cursor: str | None


class SchemaVersionOut(BaseModel):
    version: int
    schema_: dict[str, Any] | bool = Field(alias="schema")


class SchemaRegistered(BaseModel):
    version: int


class FilterTestEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=200)
    key: str | None = Field(default=None, max_length=200)
    data: Any = None


class FilterTest(BaseModel):
    """The body of ``POST /v1/filters/test``: a filter and an event to match it with."""

    model_config = ConfigDict(extra="forbid")

    filter: dict[str, Any]
    event: FilterTestEvent


class FilterMatch(BaseModel):
    matches: bool


class PortalLinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in: int = Field(default=EXPIRES_DEFAULT, ge=EXPIRES_MIN, le=EXPIRES_MAX)


class PortalLink(BaseModel):
    url: str
    expires_at: str
