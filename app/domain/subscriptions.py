"""What a subscription is on the way in: fields, defaults and their rules."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from app.domain import destinations
from app.domain.destinations import Destination, Format, WebhookDestination
from app.domain.jsonbody import unstorable_strings
from app.domain.signing import secret_key
from app.errors import FieldError, ValidationFailed

PATTERN = re.compile(r"\*|[A-Za-z0-9._:/-]{1,200}(\.\*)?")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


def _storable(value: str) -> str:
    if next(iter(unstorable_strings(value, "")), None) is not None:
        raise ValueError("must not contain \\u0000 or lone surrogates")
    return value


def _url(value: str) -> str:
    _storable(value)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("the URL must be http or https")
    if not parts.hostname:
        raise ValueError("the URL must name a host")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    return value


def _patterns(value: list[str]) -> list[str]:
    for pattern in value:
        if not PATTERN.fullmatch(pattern):
            raise ValueError(f"{pattern!r} is not an event type, '*' or a 'prefix.*' pattern")
    return value


def _headers(value: dict[str, str]) -> dict[str, str]:
    for name, header in value.items():
        if not HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{name!r} is set by eventrelay and cannot be overridden")
        if any(c in header for c in "\r\n\x00") or not header.isprintable():
            raise ValueError(f"the value of {name!r} must be printable on one line")
    return value


def _secret(value: str) -> str:
    secret_key(value)
    return value


Url = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_url)]
Patterns = Annotated[list[str], Field(min_length=1, max_length=100), AfterValidator(_patterns)]
Headers = Annotated[dict[str, str], Field(max_length=50), AfterValidator(_headers)]
Secret = Annotated[str, Field(max_length=128), AfterValidator(_secret)]
Description = Annotated[str, Field(max_length=1000), AfterValidator(_storable)]
Schedule = Annotated[list[float], Field(max_length=50)]
Ordering = Literal["key", "none"]
OnDeadLetter = Literal["skip", "block"]
Status = Literal["active", "paused", "disabled"]
FILTER_DESCRIPTION = (
    "A content filter the event's {type, key, data} must match to be delivered "
    "(operators $eq $neq $gt $gte $lt $lte $in $nin $exist $startsWith $endsWith $and $or "
    "$not; see the README, Content filters)."
)


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("retry_schedule", check_fields=False)
    @classmethod
    def _delays(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0 <= d <= 7 * 86400 for d in value):
            raise ValueError("each delay is between 0 and 604800 seconds")
        return value


DestinationDoc = Annotated[
    dict[str, Any],
    Field(
        description=(
            'Where events go: {"type": "webhook", "url"}, {"type": "rabbitmq", "url", '
            '"exchange", "routing_key"}, {"type": "nats", "url", "subject"} or '
            '{"type": "redis", "url", "stream", "maxlen"?}; names are templates over '
            "{type}, {key} and {tenant_id}. Instead of `url`."
        ),
        examples=[{"type": "nats", "url": "nats://nats.internal:4222", "subject": "events.{type}"}],
    ),
]


class SubscriptionCreate(_Common):
    url: Url | None = None
    destination: DestinationDoc | None = None
    format: Format = "eventrelay"

    @model_validator(mode="wrap")
    @classmethod
    def _needs_a_target(
        cls, data: Any, handler: ModelWrapValidatorHandler[SubscriptionCreate]
    ) -> SubscriptionCreate:
        # Without a destination, ``url`` is required as API.md has it (same error).
        created = handler(data)
        if created.url is None and created.destination is None:
            missing = InitErrorDetails(type="missing", loc=("url",), input=data)
            raise ValidationError.from_exception_data(cls.__name__, [missing])
        return created

    event_types: Patterns = Field(default_factory=lambda: ["*"])
    description: Description | None = None
    secret: Secret | None = None
    headers: Headers = Field(default_factory=dict)
    ordering: Ordering = "key"
    on_dead_letter: OnDeadLetter = "skip"
    retry_schedule: Schedule | None = None
    timeout_ms: int | None = Field(default=None, ge=100, le=300_000)
    max_in_flight: int = Field(default=32, ge=1, le=1000)
    rate_limit_per_second: float | None = Field(default=None, gt=0, le=100_000)
    filter: dict[str, Any] | None = Field(default=None, description=FILTER_DESCRIPTION)


class SubscriptionPatch(_Common):
    url: Url | None = None
    destination: DestinationDoc | None = None
    format: Format | None = None
    event_types: Patterns | None = None
    description: Description | None = None
    headers: Headers | None = None
    ordering: Ordering | None = None
    on_dead_letter: OnDeadLetter | None = None
    retry_schedule: Schedule | None = None
    timeout_ms: int | None = Field(default=None, ge=100, le=300_000)
    max_in_flight: int | None = Field(default=None, ge=1, le=1000)
    rate_limit_per_second: float | None = Field(default=None, gt=0, le=100_000)
    status: Literal["active", "paused", "disabled"] | None = None
    filter: dict[str, Any] | None = Field(
        default=None, description=FILTER_DESCRIPTION + " null removes it."
    )


def frees_blocked_lines(changes: Mapping[str, Any]) -> bool:
    """Whether a change lets waiting deliveries move up to their line's head: the
    dead-letter rule loosens to ``skip`` (a dead letter no longer blocks), or the
    ordering changes (lines are drawn anew)."""
    return changes.get("on_dead_letter") == "skip" or changes.get("ordering") is not None


def destination_of(url: str | None, raw: dict[str, Any] | None) -> Destination | None:
    """The destination a request names: ``url`` (a webhook, the short form) or
    ``destination``; None when it names neither; 422 when it names both."""
    if url is not None and raw is not None:
        raise ValidationFailed(
            "give url or destination, not both",
            [FieldError("/destination", "not allowed together with url")],
        )
    if raw is not None:
        return destinations.parse(raw)
    return None if url is None else WebhookDestination(url=url)
