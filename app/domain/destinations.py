"""Where a subscription delivers: a webhook URL or a message broker.

A destination is ``{"type": "webhook" | "rabbitmq" | "nats" | "redis", …}``
(API-v2 "Destinations"); ``url`` on a subscription is the short form of a
webhook destination. Broker names (routing keys, subjects, streams) are
templates over ``{type}``, ``{key}`` and ``{tenant_id}``. Connection URLs may
hold credentials: :func:`masked_url` is what every answer and log line shows.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from app.domain.events import validation_failed
from app.domain.jsonbody import unstorable_strings
from app.errors import FieldError, ValidationFailed

TYPES = ("webhook", "rabbitmq", "nats", "redis")
PLACEHOLDERS = frozenset({"type", "key", "tenant_id"})
MASK = "***"
SCHEMES: dict[str, tuple[str, ...]] = {
    "webhook": ("http", "https"),
    "rabbitmq": ("amqp", "amqps"),
    "nats": ("nats", "tls"),
    "redis": ("redis", "rediss"),
}
# Which destination type a connection URL's scheme belongs to.
TYPE_OF_SCHEME = {scheme: kind for kind, schemes in SCHEMES.items() for scheme in schemes}
# The module a destination type's sender needs, and the package that provides it.
CLIENT_LIBRARIES = {
    "rabbitmq": ("aio_pika", "aio-pika"),
    "nats": ("nats", "nats-py"),
    "redis": ("redis", "redis"),
}
FORMATS = ("eventrelay", "cloudevents")
Format = Literal["eventrelay", "cloudevents"]


def _storable(value: str) -> str:
    if next(iter(unstorable_strings(value, "")), None) is not None:
        raise ValueError("must not contain \\u0000 or lone surrogates")
    return value


def check_url(value: str, schemes: tuple[str, ...]) -> str:
    """``value`` is a URL of one of ``schemes`` that names a host (else ValueError)."""
    _storable(value)
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise ValueError("the URL is malformed or has an invalid port") from None
    if parts.scheme not in schemes:
        raise ValueError(f"the URL must be {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise ValueError("the URL must name a host")
    return value


def check_template(value: str) -> str:
    """A name template: literal text and ``{type}``, ``{key}``, ``{tenant_id}``."""
    _storable(value)
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(value)
            if name is not None
        ]
    except ValueError as exc:
        raise ValueError(
            f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
        ) from None
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS:
            allowed = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{name}}}; templates may use {allowed}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format or conversion")
    return value


def placeholders(template: str) -> frozenset[str]:
    """The placeholders a valid template (:func:`check_template`) uses."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def render(template: str, *, event_type: str, key: str | None, tenant_id: str) -> str:
    """The name ``template`` gives an event (``{key}`` is empty without a key)."""
    return template.format_map({"type": event_type, "key": key or "", "tenant_id": tenant_id})


def _url_of(kind: str) -> Any:
    return Annotated[
        str,
        Field(min_length=1, max_length=2048),
        AfterValidator(lambda v: check_url(v, SCHEMES[kind])),
    ]


Template = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(check_template)]


class _Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def config(self) -> dict[str, Any]:
        """Everything but the connection URL (which may hold credentials)."""
        return self.model_dump(exclude={"url"})

    def shown(self) -> dict[str, Any]:
        """As answers show it: the URL's password replaced by ``***``."""
        return {"type": self.type, "url": masked_url(self.url), **self.config()}  # type: ignore[attr-defined]


class WebhookDestination(_Destination):
    type: Literal["webhook"] = "webhook"
    url: _url_of("webhook")  # type: ignore[valid-type]

    def shown(self) -> dict[str, Any]:
        # As API.md shows a subscription's ``url``: unchanged.
        return {"type": "webhook", "url": self.url}


class RabbitMQDestination(_Destination):
    type: Literal["rabbitmq"] = "rabbitmq"
    url: _url_of("rabbitmq")  # type: ignore[valid-type]
    exchange: Annotated[str, Field(max_length=255), AfterValidator(_storable)]
    routing_key: Template


class NatsDestination(_Destination):
    type: Literal["nats"] = "nats"
    url: _url_of("nats")  # type: ignore[valid-type]
    subject: Template


class RedisDestination(_Destination):
    type: Literal["redis"] = "redis"
    url: _url_of("redis")  # type: ignore[valid-type]
    stream: Template
    maxlen: int | None = Field(default=None, ge=1, le=2**63 - 1)


Destination = WebhookDestination | RabbitMQDestination | NatsDestination | RedisDestination
_MODELS: dict[str, type[_Destination]] = {
    "webhook": WebhookDestination,
    "rabbitmq": RabbitMQDestination,
    "nats": NatsDestination,
    "redis": RedisDestination,
}
_ADAPTERS = {kind: TypeAdapter(model) for kind, model in _MODELS.items()}


def parse(raw: Any, loc: str = "/destination") -> Destination:
    """A destination from a request body, or 422 with each error's JSON pointer."""
    if not isinstance(raw, Mapping):
        raise ValidationFailed("the destination is invalid", [FieldError(loc, "must be an object")])
    kind = raw.get("type")
    if kind not in _ADAPTERS:
        allowed = ", ".join(repr(t) for t in TYPES)
        raise ValidationFailed(
            "the destination is invalid", [FieldError(f"{loc}/type", f"must be one of {allowed}")]
        )
    try:
        destination: Destination = _ADAPTERS[kind].validate_python(dict(raw))  # type: ignore[assignment]
    except ValidationError as exc:
        raise validation_failed(exc, loc) from None
    return destination


def from_columns(
    url: str, config_json: str | None, destination_url: str | None
) -> Destination | None:
    """The stored destination (None: a webhook at ``url``, the short form)."""
    if config_json is None:
        return None
    config = orjson.loads(config_json)
    return _MODELS[config["type"]].model_construct(url=destination_url or url, **config)  # type: ignore[call-arg,return-value]


def masked_url(url: str) -> str:
    """``url`` with its password (or, for NATS, a token in the user part) as ``***``."""
    if _secret_of(url) is None:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = f"{parts.username}:{MASK}" if parts.password else MASK
    return urlunsplit(SplitResult(parts.scheme, f"{userinfo}@{host}", *parts[2:]))


def hide_secrets(text: str, url: str) -> str:
    """``text`` (a broker's or a library's message) without ``url``'s credentials."""
    secret = _secret_of(url)
    if secret is None:
        return text
    return text.replace(url, masked_url(url)).replace(secret, MASK)


def _secret_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:
        return None
    if password:
        return password
    return user if user and parts.scheme in SCHEMES["nats"] else None
