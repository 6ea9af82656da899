"""CloudEvents 1.0 (HTTP binding, JSON event format) mapped to events.

The API layer picks the mode; this module sees plain values, never requests:

    structured  Content-Type application/cloudevents+json: the body is one event
    batch       application/cloudevents-batch+json: a JSON array of events
    binary      a ce-specversion header: attributes in ce-* headers, body = data

Mapping: ``type`` <- type, ``key`` <- extension ``partitionkey``, ``data`` <-
``data`` (``data_base64`` decoded; in binary mode the body),
``occurred_at`` <- time, ``schema_version`` <- extension ``schemaversion``.
The idempotency key is the pair (source, id) unless the request has an
Idempotency-Key header (single events only).

Data of a JSON media type (``application/json``, ``*/*+json``, or none given)
is the JSON value; ``text/*`` is a JSON string; anything else is 415: the
delivered body carries ``data`` as JSON and nothing says how to decode bytes.

Not a CloudEvent (no id, source, type or specversion; specversion not 1.0; an
attribute the SDK rejects) is 400. A CloudEvent eventrelay cannot take (a
type outside the event type rules, a partitionkey over 200 characters, a
schemaversion that is not a positive integer) is 422, as for plain events.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.domain import jsonbody
from app.domain.events import EventInput, rfc3339
from app.errors import BadRequest, FieldError, UnsupportedMediaType, ValidationFailed

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
SPECVERSION = "1.0"
REQUIRED = ("id", "source", "type", "specversion")
MAX_BATCH = 500
# EventInput field -> the attribute it comes from, for error locations.
_ATTRIBUTE_OF = {
    "type": "type",
    "key": "partitionkey",
    "data": "data",
    "schema_version": "schemaversion",
    "occurred_at": "time",
}

Locate = Callable[[str], str]


class InvalidCloudEvent(BadRequest):
    """Not a CloudEvent (400), with ``errors`` naming each attribute."""

    def __init__(self, detail: str, errors: list[FieldError]) -> None:
        super().__init__(detail)
        self.errors = errors


class CloudEventDocument(BaseModel):
    """A structured-mode CloudEvent as ``POST /v1/events`` reads it (for the OpenAPI document)."""

    model_config = ConfigDict(extra="allow", title="CloudEvent")

    specversion: str = Field(examples=["1.0"])
    id: str
    source: str
    type: str = Field(examples=["order.created"])
    time: str | None = Field(default=None, description="becomes the event's occurred_at")
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    partitionkey: str | None = Field(default=None, description="becomes the event's key")
    schemaversion: int | None = Field(default=None, description="the schema version to validate")
    data: Any = None
    data_base64: str | None = None


@dataclass(frozen=True, slots=True)
class MappedEvent:
    """A CloudEvent as an event, with what ingest needs besides the event itself."""

    event: EventInput
    pair_key: str  # the idempotency key (source, id) stands for
    attributes: dict[str, str]  # every context attribute as text, for the request fingerprint
    data_loc: str  # where the data sits in the request, for schema errors
    version_loc: str  # where schemaversion sits
    id_loc: str  # where id sits


def pair_key(source: str, event_id: str) -> str:
    """The idempotency key of a (source, id) pair: fixed length, printable, unambiguous."""
    return "ce:" + hashlib.sha256(orjson.dumps([source, event_id])).hexdigest()


def parse_structured(document: Any) -> MappedEvent:
    return _from_json(document, "")


def parse_batch(document: Any) -> list[MappedEvent]:
    """Every event of a batch; all of a batch's problems are raised together."""
    if not isinstance(document, list):
        raise InvalidCloudEvent(
            "a CloudEvents batch is a JSON array", [FieldError("/", "not an array")]
        )
    if not 1 <= len(document) <= MAX_BATCH:
        raise ValidationFailed(
            f"a batch holds 1 to {MAX_BATCH} events",
            [FieldError("/", f"{len(document)} events")],
        )
    mapped: list[MappedEvent] = []
    invalid: list[FieldError] = []
    unacceptable: list[FieldError] = []
    for index, item in enumerate(document):
        try:
            mapped.append(_from_json(item, f"/{index}"))
        except InvalidCloudEvent as exc:
            invalid += exc.errors
        except ValidationFailed as exc:
            unacceptable += exc.errors
    if invalid:
        raise InvalidCloudEvent("the batch holds events that are not CloudEvents", invalid)
    if unacceptable:
        raise ValidationFailed("the batch holds events that cannot be accepted", unacceptable)
    return mapped


def parse_binary(headers: Mapping[str, str], body: bytes) -> MappedEvent:
    """A binary-mode event; ``headers`` maps lower-case names to values."""
    attributes: dict[str, Any] = {
        name[3:]: unquote(value)  # percent-encoded (HTTP binding 3.1.3.2)
        for name, value in headers.items()
        if name.startswith("ce-") and len(name) > 3
    }
    content_type = headers.get("content-type")
    if content_type:
        attributes["datacontenttype"] = content_type
    data = _decode(body, content_type, "")

    def locate(attribute: str) -> str:
        if attribute == "datacontenttype":
            return "header:content-type"
        return "/" if attribute == "data" else f"header:ce-{attribute}"

    return _mapped(attributes, data, locate, data_loc="")


def _from_json(document: Any, prefix: str) -> MappedEvent:
    if not isinstance(document, dict):
        raise InvalidCloudEvent(
            "a CloudEvent is a JSON object", [FieldError(prefix or "/", "not an object")]
        )
    # The JSON event format treats null attributes as absent.
    attributes = {
        k: v for k, v in document.items() if k not in ("data", "data_base64") and v is not None
    }
    data = document.get("data")
    encoded = document.get("data_base64")
    if encoded is not None:
        if data is not None or not isinstance(encoded, str):
            raise InvalidCloudEvent(
                "data_base64 is a base64 string, and excludes data",
                [FieldError(f"{prefix}/data_base64", "invalid data_base64")],
            )
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidCloudEvent(
                "data_base64 is not base64", [FieldError(f"{prefix}/data_base64", "not base64")]
            ) from None
        data = _decode(raw, attributes.get("datacontenttype"), f"{prefix}/data_base64")
    return _mapped(attributes, data, lambda a: f"{prefix}/{a}", data_loc=f"{prefix}/data")


def _mapped(attributes: dict[str, Any], data: Any, locate: Locate, data_loc: str) -> MappedEvent:
    _require_cloudevent(attributes, locate)
    occurred_at = _time(attributes, locate)
    key, version = attributes.get("partitionkey"), attributes.get("schemaversion")
    errors = []
    if isinstance(version, bool):  # pydantic would read true as 1
        errors.append(FieldError(locate("schemaversion"), "must be an integer"))
    fields = {
        "type": attributes["type"],
        "key": key,
        "data": data,
        "schema_version": version,
        "occurred_at": occurred_at,
    }
    try:
        event = EventInput.model_validate(fields)
    except ValidationError as exc:
        errors += [
            FieldError(locate(_ATTRIBUTE_OF.get(str(e["loc"][0]), str(e["loc"][0]))), e["msg"])
            for e in exc.errors()
        ]
    if errors:
        raise ValidationFailed("the CloudEvent cannot be accepted", errors)
    text = {k: _text(v) for k, v in attributes.items() if k not in ("datacontenttype", "time")}
    if occurred_at is not None:
        text["time"] = rfc3339(occurred_at) or ""
    return MappedEvent(
        event=event,
        pair_key=pair_key(attributes["source"], attributes["id"]),
        attributes=text,
        data_loc=data_loc,
        version_loc=locate("schemaversion"),
        id_loc=locate("id"),
    )


def _require_cloudevent(attributes: dict[str, Any], locate: Locate) -> None:
    """400 unless ``attributes`` make a CloudEvent 1.0 (checked here, then by the SDK)."""
    missing = [FieldError(locate(a), "required") for a in REQUIRED if a not in attributes]
    if missing:
        raise InvalidCloudEvent("a CloudEvent needs id, source, type and specversion", missing)
    if attributes["specversion"] != SPECVERSION:
        raise InvalidCloudEvent(
            "only CloudEvents 1.0 is accepted",
            [FieldError(locate("specversion"), f"must be {SPECVERSION!r}")],
        )
    errors = [
        FieldError(locate(name), "an extension value is a string, an integer or a boolean")
        for name, value in attributes.items()
        if name not in REQUIRED and not isinstance(value, str | int)  # bool is an int
    ]
    candidate = dict(attributes)  # the SDK adds what is missing; keep ours as sent
    if isinstance(candidate.get("time"), str):
        candidate["time"] = _parse_time(candidate["time"]) or candidate["time"]
    try:
        CloudEvent(candidate, None)
    except CloudEventValidationError as exc:
        errors += [
            FieldError(locate(name), _readable(str(problem)))
            for name, problems in exc.errors.items()
            for problem in problems
        ]
    if errors:
        raise InvalidCloudEvent("the CloudEvent is invalid", errors)


def _time(attributes: dict[str, Any], locate: Locate) -> datetime | None:
    raw = attributes.get("time")
    if raw is None:
        return None
    parsed = _parse_time(raw) if isinstance(raw, str) else None
    if parsed is None:
        raise InvalidCloudEvent(
            "time is an RFC 3339 timestamp",
            [FieldError(locate("time"), "not an RFC 3339 timestamp")],
        )
    return parsed.astimezone(UTC)


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None and "T" in text.upper() else None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _readable(message: str) -> str:
    return message.replace("<class 'str'>", "string").replace(
        "<class 'datetime.datetime'>", "timestamp"
    )


def _decode(raw: bytes, content_type: Any, loc: str) -> Any:
    """Data bytes as a JSON value, by their media type."""
    if not raw:
        return None
    media = str(content_type or "application/json").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return jsonbody.parse(raw)
        except ValidationFailed as exc:
            exc.errors = [FieldError(loc + e.loc.rstrip("/") or "/", e.msg) for e in exc.errors]
            raise
    if media.startswith("text/"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"the {media} data is not UTF-8") from None
        problems = list(jsonbody.unstorable_strings(text, loc))
        if problems:
            raise ValidationFailed("the data contains characters that cannot be stored", problems)
        return text
    raise UnsupportedMediaType(
        f"CloudEvent data must be JSON or text/*; {media} cannot be delivered as JSON"
    )
