"""What an event type and a schema version are: names, compatibility modes, and
the JSON Schema documents themselves (accepted drafts, meta-validation,
compiled validators, error pointers).

One engine, ``jsonschema_rs``, compiles every schema: the registry, the
compatibility checker and ingest agree on what a schema accepts. ``format`` is
an annotation (not asserted), as Draft 2020-12 prescribes by default, and
references are never fetched: a ``$ref`` must resolve inside the schema.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

import jsonschema
import jsonschema_rs
import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.domain.events import TYPE_PATTERN, client_type, pointer
from app.errors import FieldError

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
DRAFT_7 = "http://json-schema.org/draft-07/schema"
MAX_DEPTH = 64
MAX_ERRORS = 50

Schema = dict[str, Any] | bool
Validator = jsonschema_rs.Validator

# ``GET /v1/event-types/{name}/schemas/{version}`` must stay unambiguous.
_SHADOWED_NAME = re.compile(r"(?:^|/)schemas/[^/]*$")


class Compatibility(StrEnum):
    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"


def _addressable(name: str) -> str:
    if _SHADOWED_NAME.search(name):
        raise ValueError("a name ending in 'schemas/<segment>' cannot be addressed by the API")
    return name


class EventTypeCreate(BaseModel):
    """The body of ``POST /v1/event-types``."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        Field(min_length=1, max_length=200, pattern=TYPE_PATTERN),
        AfterValidator(client_type),
        AfterValidator(_addressable),
    ]
    description: str | None = Field(default=None, max_length=1000)
    compatibility: Compatibility = Compatibility.BACKWARD


class EventTypePatch(BaseModel):
    """The body of ``PATCH /v1/event-types/{name}``; a new mode applies to later versions."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=1000)
    compatibility: Compatibility | None = None


class SchemaCreate(BaseModel):
    """The body of ``POST /v1/event-types/{name}/schemas``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # Checked by schema_problems, so that every problem is reported the same way.
    schema_: Any = Field(
        alias="schema", json_schema_extra={"type": ["object", "boolean"]}, description="JSON Schema"
    )


def is_draft7(schema: Schema) -> bool:
    return isinstance(schema, dict) and _dialect(schema.get("$schema")) == DRAFT_7


def _dialect(declared: Any) -> str | None:
    """The draft a ``$schema`` value names (absent: 2020-12), or None if unsupported."""
    if declared is None:
        return DRAFT_2020_12
    if not isinstance(declared, str):
        return None
    uri = declared.rstrip("#").replace("https://", "http://", 1)
    if uri == DRAFT_2020_12.replace("https://", "http://", 1):
        return DRAFT_2020_12
    if uri == DRAFT_7:
        return DRAFT_7
    return None


def schema_problems(schema: Any) -> list[FieldError]:
    """Why ``schema`` cannot be registered (pointers into the schema), or nothing."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, dict):
        return [FieldError("", "a JSON Schema is an object or a boolean")]
    if _depth(schema) > MAX_DEPTH:
        return [FieldError("", f"the schema is nested more than {MAX_DEPTH} levels deep")]
    dialect = _dialect(schema.get("$schema"))
    if dialect is None:
        return [FieldError("/$schema", f"use {DRAFT_2020_12} (the default) or {DRAFT_7}#")]
    meta: type[jsonschema.protocols.Validator] = (
        jsonschema.Draft7Validator if dialect == DRAFT_7 else jsonschema.Draft202012Validator
    )
    errors = sorted(
        meta(meta.META_SCHEMA).iter_errors(schema), key=lambda e: tuple(map(str, e.absolute_path))
    )
    if errors:
        return [FieldError(pointer(tuple(e.absolute_path)), e.message) for e in errors[:MAX_ERRORS]]
    try:
        compile_validator(schema)
    except jsonschema_rs.ValidationError as exc:
        return [FieldError(pointer(tuple(exc.instance_path)), _first_line(exc.message))]
    return []


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _first_line(message: str) -> str:
    return message.strip().split("\n", 1)[0]


def compile_validator(schema: Schema) -> Validator:
    """A reusable validator; raises ``jsonschema_rs.ValidationError`` for a bad schema."""
    return jsonschema_rs.validator_for(schema, validate_formats=False, offline=True)


def compile_subschemas(schema: Schema) -> jsonschema_rs.ValidatorMap:
    """A validator for every subschema, keyed ``#<JSON pointer>``."""
    return jsonschema_rs.validator_map_for(schema, validate_formats=False, offline=True)


def data_errors(validator: Validator, data: Any, prefix: str) -> list[FieldError]:
    """Every way ``data`` fails ``validator``; ``loc`` is ``prefix`` + the pointer into it."""
    if validator.is_valid(data):
        return []
    found: list[FieldError] = []
    for error in validator.iter_errors(data):
        found.append(FieldError(pointer(tuple(error.instance_path), prefix) or "/", error.message))
        if len(found) == MAX_ERRORS:
            break
    return found


def canonical(schema: Schema) -> str:
    """The text stored for a schema; equal schemas have equal text."""
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
