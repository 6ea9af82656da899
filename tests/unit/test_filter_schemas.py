"""Which filter paths under ``data`` a schema rules out (a typo caught at subscribe time)."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.content_filters import parse_filter
from app.domain.filter_schemas import impossible_paths

CLOSED = {
    "type": "object",
    "properties": {
        "total": {"type": "number"},
        "customer": {
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "additionalProperties": False,
        },
        "meta": {"type": "object"},
        "lines": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}},
                "additionalProperties": False,
            },
        },
        "ref": {"$ref": "#/$defs/address"},
        "either": {
            "anyOf": [
                {"type": "object", "properties": {"x": {}}, "additionalProperties": False},
                {"type": "object", "properties": {"y": {}}, "additionalProperties": False},
            ]
        },
    },
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"country": {"type": "string"}},
            "additionalProperties": False,
        }
    },
}
OPEN = {"type": "object", "properties": {"total": {"type": "number"}}}


def impossible(spec: dict[str, Any], *schemas: Any) -> list[str]:
    return [p.pointer for p in impossible_paths(parse_filter(spec), list(schemas))]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"total": 1}, []),
        ({"totl": 1}, ["/data/totl"]),
        ({"x-trace": 1}, []),  # a pattern property
        ({"customer": {"id": "c"}}, []),
        ({"customer": {"name": "c"}}, ["/data/customer/name"]),
        ({"meta": {"anything": {"deeper": 1}}}, []),  # an open object
        ({"total": {"cents": 1}}, ["/data/total/cents"]),  # a number has no fields
        ({"lines": {"sku": "A"}}, []),  # the field of the array's elements
        ({"lines": {"qty": 1}}, ["/data/lines/qty"]),
        ({"ref": {"country": "FR"}}, []),
        ({"ref": {"zip": "1"}}, ["/data/ref/zip"]),
        ({"either": {"y": 1}}, []),
        ({"either": {"z": 1}}, ["/data/either/z"]),
        ({"typo": {"deeper": 1}}, ["/data/typo"]),  # the shortest only
        ({"$or": [{"total": 1}, {"totl": 2}]}, ["/data/$or/1/totl"]),
        ({"$not": {"nope": {"$exist": True}}}, ["/data/$not/nope"]),
    ],
)
def test_closed_schemas_rule_out_paths(data: dict[str, Any], expected: list[str]) -> None:
    assert impossible({"data": data}, CLOSED) == expected


def test_a_path_is_impossible_only_when_no_schema_allows_it() -> None:
    assert impossible({"data": {"totl": 1}}, CLOSED, OPEN) == []
    assert impossible({"data": {"totl": 1}}, OPEN) == []
    assert impossible({"data": {"totl": 1}}, CLOSED, CLOSED) == ["/data/totl"]


@pytest.mark.parametrize(
    "schema",
    [
        True,
        {},
        {"$ref": "https://example.com/other.json"},  # another document: cannot tell
        {"type": "object", "unevaluatedProperties": False},  # not followed
        {"type": "object", "patternProperties": {"(": {}}, "additionalProperties": False},
        {"type": "object", "if": {"required": ["a"]}, "then": {"additionalProperties": False}},
    ],
)
def test_what_the_walk_cannot_follow_counts_as_possible(schema: Any) -> None:
    assert impossible({"data": {"anything": 1}}, schema) == []


def test_only_paths_under_data_are_checked() -> None:
    assert impossible({"type": "x", "key": "y", "data": {"total": 1}}, CLOSED) == []
    assert impossible({"data": 5}, {"type": "string"}) == []
    assert impossible({"data": {"a": 1}}, False) == ["/data/a"]


def test_draft7_ignores_keywords_beside_ref() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"open": {"type": "object"}},
        "$ref": "#/definitions/open",
        "additionalProperties": False,
    }
    assert impossible({"data": {"anything": 1}}, schema) == []
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    assert impossible({"data": {"anything": 1}}, schema) == ["/data/anything"]
