"""The compatibility checker, table-driven.

Each case is an (old, new) pair with the verdict of BACKWARD (new reads
everything old accepted) and FORWARD (old reads everything new accepts);
FULL is both, NONE always passes. The chains check the transitive modes
against every earlier version, the others against the latest only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from app.domain.compat import check, is_subset
from app.domain.event_schemas import Compatibility as C
from app.errors import FieldError

D7 = "http://json-schema.org/draft-07/schema#"


def obj(props: dict[str, Any], *, required: list[str] | None = None, **extra: Any) -> Any:
    return {"type": "object", "properties": props, "required": required or [], **extra}


def closed(props: dict[str, Any], **extra: Any) -> Any:
    return obj(props, additionalProperties=False, **extra)


INT, NUM, STR = {"type": "integer"}, {"type": "number"}, {"type": "string"}


@dataclass(frozen=True)
class Case:
    name: str
    old: Any
    new: Any
    backward: bool
    forward: bool


CASES = [
    # identical and cosmetic
    Case("identical object", obj({"a": STR}), obj({"a": STR}), True, True),
    Case("description changed", {**STR, "description": "x"}, {**STR, "title": "y"}, True, True),
    Case("format is an annotation", {**STR, "format": "email"}, STR, True, True),
    Case("true and empty", True, {}, True, True),
    # properties under open and closed content models
    Case("add property, open", obj({"a": STR}), obj({"a": STR, "b": INT}), False, True),
    Case("add property, closed", closed({"a": STR}), closed({"a": STR, "b": INT}), True, False),
    Case("add unconstrained property, open", obj({"a": STR}), obj({"a": STR, "b": {}}), True, True),
    Case("remove property, open", obj({"a": STR, "b": INT}), obj({"a": STR}), True, False),
    Case("remove property, closed", closed({"a": STR, "b": INT}), closed({"a": STR}), False, True),
    Case("close the content model", obj({"a": STR}), closed({"a": STR}), False, True),
    Case("open the content model", closed({"a": STR}), obj({"a": STR}), True, False),
    Case(
        "additionalProperties schema widened",
        obj({}, additionalProperties=INT),
        obj({}, additionalProperties=NUM),
        True,
        False,
    ),
    Case(
        "property added under additionalProperties schema",
        obj({}, additionalProperties=INT),
        obj({"a": NUM}, additionalProperties=INT),
        True,
        False,
    ),
    # required
    Case("add required", obj({"a": STR}), obj({"a": STR}, required=["a"]), False, True),
    Case("remove required", obj({"a": STR}, required=["a"]), obj({"a": STR}), True, False),
    Case(
        "minProperties implied by required",
        obj({"a": STR, "b": STR}, required=["a", "b"]),
        obj({"a": STR, "b": STR}, minProperties=2),
        True,
        False,
    ),
    Case(
        "dependentRequired added",
        obj({"a": STR, "b": STR}),
        obj({"a": STR, "b": STR}, dependentRequired={"a": ["b"]}),
        False,
        True,
    ),
    # types
    Case("integer widened to number", INT, NUM, True, False),
    Case("number narrowed to integer", NUM, INT, False, True),
    Case("string made nullable", STR, {"type": ["string", "null"]}, True, False),
    Case("string to integer", STR, INT, False, False),
    Case("null to null or boolean", {"type": "null"}, {"type": ["null", "boolean"]}, True, False),
    Case("type added to anything", {}, STR, False, True),
    # enum and const
    Case("enum extended", {"enum": ["a", "b"]}, {"enum": ["a", "b", "c"]}, True, False),
    Case("enum reduced", {"enum": ["a", "b"]}, {"enum": ["a"]}, False, True),
    Case("const to enum holding it", {"const": "a"}, {"enum": ["a", "b"]}, True, False),
    Case("const added", STR, {"const": "a"}, False, True),
    Case("integer enum to integer type", {"enum": [1, 2]}, INT, True, False),
    Case("true is not 1", {"enum": [True]}, {"enum": [1]}, False, False),
    # numeric limits
    Case("minimum loosened", {**NUM, "minimum": 5}, {**NUM, "minimum": 0}, True, False),
    Case("minimum tightened", {**NUM, "minimum": 0}, {**NUM, "minimum": 5}, False, True),
    Case("maximum added", NUM, {**NUM, "maximum": 10}, False, True),
    Case(
        "minimum made exclusive",
        {**NUM, "minimum": 0},
        {**NUM, "exclusiveMinimum": 0},
        False,
        True,
    ),
    Case(
        "exclusive 0 and minimum 1 agree on integers",
        {**INT, "exclusiveMinimum": 0},
        {**INT, "minimum": 1},
        True,
        True,
    ),
    Case("multipleOf loosened", {**INT, "multipleOf": 4}, {**INT, "multipleOf": 2}, True, False),
    # lengths and counts
    Case("maxLength loosened", {**STR, "maxLength": 5}, {**STR, "maxLength": 10}, True, False),
    Case("minLength tightened", STR, {**STR, "minLength": 1}, False, True),
    Case(
        "item count loosened",
        {"type": "array", "minItems": 2, "maxItems": 3},
        {"type": "array", "minItems": 1, "maxItems": 5},
        True,
        False,
    ),
    Case("maxItems tightened", {"type": "array"}, {"type": "array", "maxItems": 3}, False, True),
    Case(
        "uniqueItems added", {"type": "array"}, {"type": "array", "uniqueItems": True}, False, True
    ),
    # nesting
    Case(
        "nested property widened",
        obj({"a": obj({"b": INT})}),
        obj({"a": obj({"b": NUM})}),
        True,
        False,
    ),
    Case(
        "array items narrowed",
        {"type": "array", "items": NUM},
        {"type": "array", "items": INT},
        False,
        True,
    ),
    Case(
        "prefixItems added",
        {"type": "array"},
        {"type": "array", "prefixItems": [STR]},
        False,
        True,
    ),
    Case(
        "array of objects gains a closed model",
        {"type": "array", "items": obj({"a": STR})},
        {"type": "array", "items": closed({"a": STR})},
        False,
        True,
    ),
    # references
    Case(
        "definition loosened",
        {"$defs": {"x": {**STR, "maxLength": 3}}, "properties": {"a": {"$ref": "#/$defs/x"}}},
        {"$defs": {"x": {**STR, "maxLength": 5}}, "properties": {"a": {"$ref": "#/$defs/x"}}},
        True,
        False,
    ),
    Case(
        "definition renamed and moved",
        {"$defs": {"a": INT}, "properties": {"p": {"$ref": "#/$defs/a"}}},
        {"definitions": {"b": INT}, "properties": {"p": {"$ref": "#/definitions/b"}}},
        True,
        True,
    ),
    Case(
        "recursive schema, identical",
        {"$defs": {"n": obj({"next": {"$ref": "#/$defs/n"}})}, "$ref": "#/$defs/n"},
        {"$defs": {"n": obj({"next": {"$ref": "#/$defs/n"}})}, "$ref": "#/$defs/n"},
        True,
        True,
    ),
    Case(
        "recursive schema, leaf widened",
        {"$defs": {"n": obj({"next": {"$ref": "#/$defs/n"}, "v": INT})}, "$ref": "#/$defs/n"},
        {"$defs": {"n": obj({"next": {"$ref": "#/$defs/n"}, "v": NUM})}, "$ref": "#/$defs/n"},
        True,
        False,
    ),
    # jsonschema_rs reads an unguarded cycle as true: assuming it would be circular.
    Case("unguarded self-reference", {"anyOf": [{"$ref": "#"}, STR]}, STR, False, True),
    Case("unguarded cycle in the new schema", STR, {"allOf": [{"$ref": "#"}], **STR}, False, True),
    Case(
        "anchor references are refused",
        {"$ref": "#x", "$defs": {"x": {"$anchor": "x"}}},
        {"$ref": "#x", "$defs": {"x": {"$anchor": "x", "type": "string"}}},
        False,
        False,
    ),
    # boolean schemas
    Case("true to false", True, False, False, True),
    Case("false to a string", False, STR, True, False),
    # what cannot be decided is refused, unless identical
    Case("pattern changed", {**STR, "pattern": "^a"}, {**STR, "pattern": "^b"}, False, False),
    Case("pattern added", STR, {**STR, "pattern": "^a"}, False, True),
    Case(
        "identical pattern, length loosened",
        {**STR, "pattern": "^a", "maxLength": 3},
        {**STR, "pattern": "^a", "maxLength": 9},
        True,
        False,
    ),
    Case("oneOf identical", {"oneOf": [STR, INT]}, {"oneOf": [STR, INT]}, True, True),
    Case("oneOf changed", {"oneOf": [STR, INT]}, {"oneOf": [STR, NUM]}, False, False),
    Case(
        "anyOf extended",
        {"anyOf": [STR, INT]},
        {"anyOf": [STR, INT, {"type": "null"}]},
        True,
        False,
    ),
    Case("not changed", {"not": STR}, {"not": INT}, False, False),
    Case(
        "identical if/then, property added to closed model",
        closed({"a": STR}, **{"if": obj({"a": {"const": "x"}}), "then": {"required": ["a"]}}),
        closed(
            {"a": STR, "b": INT}, **{"if": obj({"a": {"const": "x"}}), "then": {"required": ["a"]}}
        ),
        True,
        False,
    ),
    Case(
        "patternProperties changed",
        obj({}, patternProperties={"^x": STR}),
        obj({}, patternProperties={"^x": INT}),
        False,
        False,
    ),
    Case(
        "patternProperties identical, property added to closed model",
        closed({"a": STR}, patternProperties={"^x": STR}),
        closed({"a": STR, "b": INT}, patternProperties={"^x": STR}),
        True,
        False,
    ),
    Case(
        "unevaluatedProperties added",
        obj({"a": STR}),
        obj({"a": STR}, unevaluatedProperties=False),
        False,
        True,
    ),
    Case(
        "propertyNames added to a closed model that fits it",
        closed({"a": STR, "b": STR}),
        closed({"a": STR, "b": STR}, propertyNames={"maxLength": 1}),
        True,
        True,
    ),
    Case(
        "propertyNames added to an open model",
        obj({"a": STR}),
        obj({"a": STR}, propertyNames={"maxLength": 1}),
        False,
        True,
    ),
    # Draft 7
    Case(
        "Draft 7 tuple opened",
        {"$schema": D7, "items": [STR], "additionalItems": False},
        {"$schema": D7, "items": [STR], "additionalItems": True},
        True,
        False,
    ),
    Case(
        "Draft 7 ignores $ref siblings",
        {"$schema": D7, "definitions": {"a": {}}, "$ref": "#/definitions/a", "type": "string"},
        {"$schema": D7},
        True,
        True,
    ),
    Case(
        "Draft 7 to 2020-12, same meaning",
        {"$schema": D7, **obj({"a": INT})},
        obj({"a": NUM}),
        True,
        False,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("mode", [C.BACKWARD, C.FORWARD, C.FULL, C.NONE])
def test_verdict(case: Case, mode: C) -> None:
    expected = {
        C.BACKWARD: case.backward,
        C.FORWARD: case.forward,
        C.FULL: case.backward and case.forward,
        C.NONE: True,
    }[mode]
    problems = check(mode, case.new, [(1, case.old)])
    assert (problems == []) is expected, problems


def test_the_table_is_dozens_of_pairs_with_every_verdict() -> None:
    verdicts = {(c.backward, c.forward) for c in CASES}
    assert len(CASES) >= 50
    assert verdicts == {(True, True), (True, False), (False, True), (False, False)}


@dataclass(frozen=True)
class Chain:
    name: str
    versions: list[Any]
    new: Any
    verdicts: dict[C, bool]


CHAINS = [
    Chain(
        "narrowed before, kept now",
        [NUM, INT],
        INT,
        {
            C.BACKWARD: True,
            C.BACKWARD_TRANSITIVE: False,  # version 1 accepted 1.5
            C.FORWARD: True,
            C.FORWARD_TRANSITIVE: True,
            C.FULL: True,
            C.FULL_TRANSITIVE: False,
        },
    ),
    Chain(
        "widened before, kept now",
        [INT, NUM],
        NUM,
        {
            C.BACKWARD: True,
            C.BACKWARD_TRANSITIVE: True,
            C.FORWARD: True,
            C.FORWARD_TRANSITIVE: False,  # version 1 rejects 1.5
            C.FULL: True,
            C.FULL_TRANSITIVE: False,
        },
    ),
    Chain(
        "enum growing",
        [{"enum": ["a"]}, {"enum": ["a", "b"]}],
        {"enum": ["a", "b", "c"]},
        {
            C.BACKWARD: True,
            C.BACKWARD_TRANSITIVE: True,
            C.FORWARD: False,
            C.FORWARD_TRANSITIVE: False,
            C.FULL: False,
            C.FULL_TRANSITIVE: False,
        },
    ),
    Chain(
        "optional properties come and go in an open model",
        [obj({"a": STR}), obj({"a": STR, "b": {}}), obj({"a": STR, "b": {}, "c": {}})],
        obj({"a": STR, "c": {}}),
        dict.fromkeys(
            [
                C.BACKWARD,
                C.BACKWARD_TRANSITIVE,
                C.FORWARD,
                C.FORWARD_TRANSITIVE,
                C.FULL,
                C.FULL_TRANSITIVE,
            ],
            True,
        ),
    ),
    Chain(
        "a required property dropped two versions ago",
        [obj({"a": STR}, required=["a"]), obj({"a": STR}), obj({"a": STR, "b": {}})],
        obj({"a": STR, "b": {}}),
        {
            C.BACKWARD: True,
            C.BACKWARD_TRANSITIVE: True,
            C.FORWARD: True,
            C.FORWARD_TRANSITIVE: False,  # version 1 requires "a"
            C.FULL: True,
            C.FULL_TRANSITIVE: False,
        },
    ),
]


@pytest.mark.parametrize("chain", CHAINS, ids=[c.name for c in CHAINS])
@pytest.mark.parametrize("mode", list(C))
def test_chain_verdict(chain: Chain, mode: C) -> None:
    expected = True if mode is C.NONE else chain.verdicts[mode]
    previous = list(enumerate(chain.versions, 1))
    problems = check(mode, chain.new, previous)
    assert (problems == []) is expected, problems


def test_no_previous_version_is_always_compatible() -> None:
    assert check(C.FULL_TRANSITIVE, STR, []) == []


# -- the reasons ----------------------------------------------------------------------


def test_one_reason_per_breaking_change_pointing_into_the_new_schema() -> None:
    old = obj({"total": NUM, "note": STR})
    new = obj({"total": INT, "note": STR}, required=["note"])
    assert check(C.BACKWARD, new, [(3, old)]) == [
        FieldError(
            "/properties/total/type", "version 3 accepts number values, the new schema does not"
        ),
        FieldError(
            "/required/0", "property 'note' is required by the new schema, not by version 3"
        ),
    ]


def test_forward_reasons_point_into_the_new_schema_too() -> None:
    old = closed({"a": STR})
    new = closed({"a": STR, "b": INT})
    (problem,) = check(C.FORWARD, new, [(1, old)])
    assert problem.loc == "/properties/b"
    assert "not in version 1" in problem.msg


def test_open_model_reason_says_why() -> None:
    (problem,) = check(C.BACKWARD, obj({"a": STR, "b": INT}), [(2, obj({"a": STR}))])
    assert problem.loc == "/properties/b"
    assert "additionalProperties" in problem.msg
    assert "version 2" in problem.msg


def test_transitive_reasons_name_each_version() -> None:
    problems = check(C.BACKWARD_TRANSITIVE, INT, [(1, NUM), (2, NUM)])
    assert {p.msg for p in problems} == {
        "version 1 accepts number values, the new schema does not",
        "version 2 accepts number values, the new schema does not",
    }


def test_undecidable_reasons_say_so() -> None:
    (problem,) = check(C.BACKWARD, {**STR, "pattern": "^b"}, [(1, {**STR, "pattern": "^a"})])
    assert problem.loc == "/pattern"
    assert problem.msg.startswith("cannot decide")


def test_reference_reasons_point_at_the_definition() -> None:
    old = {"$defs": {"x": {**STR, "maxLength": 5}}, "properties": {"a": {"$ref": "#/$defs/x"}}}
    new = {"$defs": {"x": {**STR, "maxLength": 3}}, "properties": {"a": {"$ref": "#/$defs/x"}}}
    (problem,) = check(C.BACKWARD, new, [(1, old)])
    assert problem.loc == "/$defs/x/maxLength"


def test_removed_value_is_named() -> None:
    (reason,) = is_subset({"enum": ["a", "b"]}, {"enum": ["a"]})
    assert '"b"' in reason.msg


def test_self_referencing_definition_terminates() -> None:
    loop = {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    assert is_subset(loop, STR)  # refused, not hung


def test_huge_schemas_are_refused_not_hung() -> None:
    wide: Any = {"anyOf": [{"type": "string", "minLength": i} for i in range(60)]}
    narrow: Any = {"anyOf": [{"type": "string", "maxLength": i} for i in range(60)]}
    nested_w, nested_n = wide, narrow
    for _ in range(3):
        nested_w = {"anyOf": [nested_w] * 20}
        nested_n = {"anyOf": [nested_n] * 20}
    assert is_subset(nested_n, nested_w)
