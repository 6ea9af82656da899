"""What may be registered as a schema version, and validating data against one."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.event_schemas import (
    MAX_DEPTH,
    canonical,
    compile_validator,
    data_errors,
    is_draft7,
    schema_problems,
)
from app.errors import FieldError


@pytest.mark.parametrize(
    "schema",
    [
        True,
        False,
        {},
        {"type": "object", "properties": {"total": {"type": "number"}}},
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "string"},
        {"$schema": "https://json-schema.org/draft/2020-12/schema#", "type": "string"},
        {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]},
        {"$schema": "http://json-schema.org/draft-07/schema", "type": "string"},
        {"$defs": {"a": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/a"}}},
        {
            "$id": "https://example.com/order",
            "$ref": "https://example.com/order#/$defs/a",
            "$defs": {"a": {}},
        },
        {"type": "string", "pattern": "^\\p{L}+$"},  # ECMA 262, not Python re
    ],
)
def test_valid_schemas(schema: Any) -> None:
    assert schema_problems(schema) == []


@pytest.mark.parametrize(
    ("schema", "loc"),
    [
        ([], ""),
        ("string", ""),
        ({"type": "nope"}, "/type"),
        ({"properties": {"a": {"minLength": -1}}}, "/properties/a/minLength"),
        ({"$schema": "http://json-schema.org/draft-04/schema#"}, "/$schema"),
        ({"$schema": 7}, "/$schema"),
        ({"$ref": "https://example.com/schema.json"}, ""),  # never fetched
        ({"$ref": "#/$defs/missing"}, ""),
        ({"type": "string", "pattern": "("}, "/pattern"),
        # 2020-12 forbids the Draft 7 tuple form
        ({"items": [{"type": "string"}]}, "/items"),
    ],
)
def test_invalid_schemas(schema: Any, loc: str) -> None:
    problems = schema_problems(schema)
    assert problems, schema
    assert problems[0].loc == loc


def test_too_deep() -> None:
    schema: Any = {"type": "string"}
    for _ in range(MAX_DEPTH):
        schema = {"items": schema}
    (problem,) = schema_problems(schema)
    assert "nested" in problem.msg


def test_draft_detection() -> None:
    assert is_draft7({"$schema": "http://json-schema.org/draft-07/schema#"})
    assert not is_draft7({})
    assert not is_draft7(True)


def test_canonical_text_ignores_key_order() -> None:
    assert canonical({"b": 1, "a": {"d": 2, "c": 3}}) == canonical({"a": {"c": 3, "d": 2}, "b": 1})


def test_data_errors_are_pointers_below_a_prefix() -> None:
    validator = compile_validator(
        {
            "type": "object",
            "properties": {"total": {"type": "number"}, "lines": {"items": {"maxLength": 2}}},
            "required": ["currency"],
        }
    )
    errors = data_errors(validator, {"total": "x", "lines": ["ok", "long"]}, "/events/3/data")
    assert sorted(errors, key=lambda e: e.loc) == [
        FieldError("/events/3/data", '"currency" is a required property'),
        FieldError("/events/3/data/lines/1", '"long" is longer than 2 characters'),
        FieldError("/events/3/data/total", '"x" is not of type "number"'),
    ]


def test_data_errors_at_the_root_without_prefix() -> None:
    (error,) = data_errors(compile_validator({"type": "object"}), 3, "")
    assert error.loc == "/"


def test_format_is_not_asserted() -> None:
    assert data_errors(compile_validator({"format": "email"}), "not an email", "") == []
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "format": "email"}
    assert data_errors(compile_validator(draft7), "not an email", "") == []


def test_pointer_tokens_are_escaped() -> None:
    validator = compile_validator({"properties": {"a/b~c": {"type": "string"}}})
    (error,) = data_errors(validator, {"a/b~c": 1}, "/data")
    assert error.loc == "/data/a~1b~0c"
