"""Content filters (API-v2 "Filters"): every operator, nesting, arrays, missing
fields, type mismatches, and the JSON pointers of malformed filters."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.content_filters import parse_filter, stored_filter
from app.errors import ValidationFailed

ORDER = {
    "total": 120,
    "price": 9.5,
    "currency": "EUR",
    "paid": True,
    "note": None,
    "tags": ["vip", "eu", 3],
    "customer": {"id": "cus_1", "tier": "gold", "address": {"country": "FR"}},
    "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 5, "gift": True}],
    "matrix": [[1, 2], [3]],
    "empty": {},
}


def matches(spec: dict[str, Any], data: Any = ORDER, *, key: str | None = "customer-7") -> bool:
    return parse_filter(spec).matches("order.created", key, data)


def data(condition: dict[str, Any]) -> dict[str, Any]:
    return {"data": condition}


# (filter, expected) against ORDER, event type order.created, key customer-7.
CASES: list[tuple[dict[str, Any], bool]] = [
    # The whole filter, the top-level fields.
    ({}, True),
    ({"type": "order.created"}, True),
    ({"type": "order.refunded"}, False),
    ({"key": "customer-7"}, True),
    ({"key": {"$startsWith": "customer-"}}, True),
    ({"type": {"$in": ["order.created", "order.paid"]}}, True),
    # $eq: a plain value means $eq; JSON types are kept apart.
    (data({"total": 120}), True),
    (data({"total": {"$eq": 120}}), True),
    (data({"total": 120.0}), True),
    (data({"total": 121}), False),
    (data({"total": "120"}), False),
    (data({"paid": True}), True),
    (data({"paid": 1}), False),
    (data({"total": True}), False),
    (data({"currency": "EUR"}), True),
    (data({"currency": "eur"}), False),
    (data({"note": None}), True),
    (data({"note": {"$eq": None}}), True),
    (data({"note": False}), False),
    (
        data({"customer": {"$eq": {"id": "cus_1", "tier": "gold", "address": {"country": "FR"}}}}),
        True,
    ),
    (data({"customer": {"$eq": {"id": "cus_1"}}}), False),
    (data({"empty": {"$eq": {}}}), True),
    (data({"tags": ["vip", "eu", 3]}), True),  # the whole array
    (data({"tags": ["eu", "vip", 3]}), False),  # in another order
    (data({"matrix": [3]}), True),  # an element that is itself an array
    # $neq: the negation of $eq.
    (data({"total": {"$neq": 121}}), True),
    (data({"total": {"$neq": 120}}), False),
    (data({"total": {"$neq": "120"}}), True),
    (data({"paid": {"$neq": 1}}), True),
    (data({"tags": {"$neq": "vip"}}), False),  # an element equals it
    (data({"tags": {"$neq": "us"}}), True),
    # Ordering: numbers with numbers, strings with strings, nothing else.
    (data({"total": {"$gt": 100}}), True),
    (data({"total": {"$gt": 120}}), False),
    (data({"total": {"$gte": 120}}), True),
    (data({"total": {"$lt": 120.5}}), True),
    (data({"total": {"$lte": 119}}), False),
    (data({"price": {"$gt": 9}}), True),
    (data({"price": {"$lte": 9.5}}), True),
    (data({"total": {"$gt": "100"}}), False),
    (data({"currency": {"$gt": 5}}), False),
    (data({"currency": {"$gt": "EUA"}}), True),
    (data({"currency": {"$lt": "EUA"}}), False),
    (data({"currency": {"$gte": "EUR"}}), True),
    (data({"paid": {"$gt": 0}}), False),  # true is not a number
    (data({"note": {"$gte": 0}}), False),
    (data({"customer": {"$gt": 0}}), False),
    (data({"total": {"$gt": 100, "$lt": 200}}), True),
    (data({"total": {"$gt": 100, "$lt": 110}}), False),
    (data({"tags": {"$gt": 2}}), True),  # the element 3
    (data({"tags": {"$gt": 3}}), False),
    # $in / $nin: membership, never a substring.
    (data({"currency": {"$in": ["EUR", "USD"]}}), True),
    (data({"currency": {"$in": ["USD"]}}), False),
    (data({"currency": {"$in": ["EURO"]}}), False),
    (data({"currency": {"$in": ["EU"]}}), False),
    (data({"currency": {"$in": []}}), False),
    (data({"total": {"$in": [120.0]}}), True),
    (data({"paid": {"$in": [1]}}), False),
    (data({"total": {"$in": [True]}}), False),
    (data({"paid": {"$in": [True]}}), True),
    (data({"note": {"$in": [None]}}), True),
    (
        data(
            {
                "customer": {
                    "$in": [
                        {"id": "x"},
                        {"address": {"country": "FR"}, "id": "cus_1", "tier": "gold"},
                    ]
                }
            }
        ),
        True,
    ),
    (data({"tags": {"$in": ["eu"]}}), True),  # an element is a member
    (data({"tags": {"$in": [["vip", "eu", 3]]}}), True),  # the whole array is
    (data({"currency": {"$nin": ["USD"]}}), True),
    (data({"currency": {"$nin": ["EUR", "USD"]}}), False),
    (data({"tags": {"$nin": ["eu"]}}), False),
    (data({"tags": {"$nin": ["us"]}}), True),
    # $exist: a null value exists.
    (data({"total": {"$exist": True}}), True),
    (data({"total": {"$exist": False}}), False),
    (data({"note": {"$exist": True}}), True),
    (data({"missing": {"$exist": True}}), False),
    (data({"missing": {"$exist": False}}), True),
    (data({"customer": {"address": {"zip": {"$exist": False}}}}), True),
    # $startsWith / $endsWith: strings only, case-sensitive.
    (data({"currency": {"$startsWith": "EU"}}), True),
    (data({"currency": {"$startsWith": "eu"}}), False),
    (data({"currency": {"$startsWith": ""}}), True),
    (data({"currency": {"$endsWith": "UR"}}), True),
    (data({"currency": {"$endsWith": "E"}}), False),
    (data({"total": {"$startsWith": "12"}}), False),
    (data({"customer": {"$startsWith": "c"}}), False),
    (data({"tags": {"$startsWith": "v"}}), True),  # an element
    (data({"tags": {"$endsWith": "x"}}), False),
    # Missing fields: only $exist false, $neq, $nin, and $not around the rest.
    (data({"missing": None}), False),
    (data({"missing": {"$eq": None}}), False),
    (data({"missing": {"$neq": None}}), True),
    (data({"missing": {"$neq": 1}}), True),
    (data({"missing": {"$nin": [1]}}), True),
    (data({"missing": {"$in": [None]}}), False),
    (data({"missing": {"$gt": 0}}), False),
    (data({"missing": {"$lte": 0}}), False),
    (data({"missing": {"$startsWith": ""}}), False),
    (data({"missing": {"$endsWith": ""}}), False),
    (data({"missing": {"$not": {"$gt": 0}}}), True),
    (data({"missing": {"$not": {"$eq": None}}}), True),
    (data({"missing": {"$not": {"$exist": False}}}), False),
    (data({"missing": {"deeper": {"$exist": False}}}), True),
    (data({"missing": {"deeper": 1}}), False),
    (data({"total": {"deeper": {"$exist": False}}}), True),  # a number has no fields
    (data({"total": {"deeper": {"$neq": 1}}}), True),
    # Nested objects match nested fields.
    (data({"customer": {"tier": "gold"}}), True),
    (data({"customer": {"tier": "gold", "id": "cus_2"}}), False),
    (data({"customer": {"address": {"country": "FR"}}}), True),
    (data({"customer": {"address": {"country": {"$in": ["DE", "FR"]}}}}), True),
    (data({"customer": {"address": {"country": "DE"}}}), False),
    (data({"customer": {"$exist": True, "tier": {"$neq": "silver"}}}), True),
    # Arrays of objects: a field of an array is the field of each element.
    (data({"lines": {"sku": "B"}}), True),
    (data({"lines": {"sku": "C"}}), False),
    (data({"lines": {"qty": {"$gte": 5}}}), True),
    (data({"lines": {"qty": {"$gt": 5}}}), False),
    (data({"lines": {"gift": True}}), True),
    (data({"lines": {"gift": {"$exist": True}}}), True),
    (data({"lines": {"gift": {"$exist": False}}}), False),  # one element has it
    (data({"lines": {"sku": {"$neq": "A"}}}), False),  # one element equals it
    (data({"lines": {"sku": {"$nin": ["C"]}}}), True),
    (data({"lines": {"sku": "A", "qty": 5}}), True),  # each condition on its own
    # $and / $or / $not, at the top and under a field.
    ({"$and": [{"type": "order.created"}, data({"total": {"$gt": 100}})]}, True),
    ({"$and": [{"type": "order.created"}, data({"total": {"$gt": 200}})]}, False),
    ({"$or": [{"type": "order.refunded"}, data({"total": {"$gt": 100}})]}, True),
    ({"$or": [{"type": "order.refunded"}, data({"total": {"$gt": 200}})]}, False),
    ({"$not": {"type": "x"}}, True),
    ({"$not": {"type": "order.created"}}, False),
    ({"$not": {"$or": [{"type": "x"}, {"key": "customer-7"}]}}, False),
    (data({"total": {"$not": {"$gt": 5}}}), False),
    (data({"total": {"$not": {"$gt": 500}}}), True),
    (data({"total": {"$or": [{"$lt": 10}, {"$gt": 100}]}}), True),
    (data({"total": {"$and": [{"$gt": 10}, {"$lt": 100}]}}), False),
    (data({"$or": [{"currency": "USD"}, {"customer": {"tier": "gold"}}]}), True),
    (data({"$not": {"currency": "USD"}}), True),
    (data({"customer": {"$not": {"address": {"country": "FR"}}}}), False),
    # The contract's example.
    (
        {
            "data": {"total": {"$gte": 100}, "currency": {"$in": ["EUR", "USD"]}},
            "$or": [{"key": {"$startsWith": "customer-"}}, {"type": "order.refunded"}],
        },
        True,
    ),
]


@pytest.mark.parametrize(("spec", "expected"), CASES)
def test_matches(spec: dict[str, Any], expected: bool) -> None:
    assert matches(spec) is expected


@pytest.mark.parametrize(
    ("spec", "data_value", "key", "expected"),
    [
        # An event without a key has "key": null, which exists.
        ({"key": None}, {}, None, True),
        ({"key": {"$exist": True}}, {}, None, True),
        ({"key": {"$startsWith": ""}}, {}, None, False),
        # data is whatever JSON the event carries.
        ({"data": None}, None, "k", True),
        ({"data": {"a": {"$exist": False}}}, None, "k", True),
        ({"data": 5}, 5, "k", True),
        ({"data": {"$gt": 4}}, 5, "k", True),
        ({"data": "x"}, ["x", "y"], "k", True),
        ({"data": {"a": 1}}, [{"a": 2}, {"a": 1}], "k", True),
        ({"data": {"a": 1}}, [[{"a": 1}]], "k", False),  # one level of arrays
        ({"data": {"a": {"b": 1}}}, {"a": [{"b": [0, 1]}]}, "k", True),
        ({"data": {"a~b/c": 1}}, {"a~b/c": 1}, "k", True),
    ],
)
def test_documents(spec: dict[str, Any], data_value: Any, key: str | None, expected: bool) -> None:
    assert matches(spec, data_value, key=key) is expected


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        ([], {"/": "a filter is a JSON object"}),
        ({"foo": 1}, {"/foo": "an event has only type, key and data"}),
        ({"$eq": 1}, {"/$eq": "$eq applies to a field; at the top: $and, $or, $not"}),
        (
            {"data": {"a": {}}},
            {"/data/a": 'an empty condition; {"$eq": {}} matches an empty object'},
        ),
        ({"data": {"a": {"$regex": "x"}}}, {"/data/a/$regex": "unknown operator $regex"}),
        ({"data": {"a": {"$gt": True}}}, {"/data/a/$gt": "$gt compares with a number or a string"}),
        (
            {"data": {"a": {"$lte": None}}},
            {"/data/a/$lte": "$lte compares with a number or a string"},
        ),
        (
            {"data": {"a": {"$gte": [1]}}},
            {"/data/a/$gte": "$gte compares with a number or a string"},
        ),
        ({"data": {"a": {"$in": "EUR"}}}, {"/data/a/$in": "$in takes an array"}),
        ({"data": {"a": {"$nin": {"x": 1}}}}, {"/data/a/$nin": "$nin takes an array"}),
        ({"data": {"a": {"$in": list(range(1001))}}}, {"/data/a/$in": "at most 1000"}),
        ({"data": {"a": {"$exist": 1}}}, {"/data/a/$exist": "$exist takes true or false"}),
        (
            {"data": {"a": {"$startsWith": 1}}},
            {"/data/a/$startsWith": "$startsWith takes a string"},
        ),
        ({"data": {"a": {"$endsWith": None}}}, {"/data/a/$endsWith": "$endsWith takes a string"}),
        ({"$and": []}, {"/$and": "$and takes a non-empty array of filters"}),
        ({"$or": {"type": "x"}}, {"/$or": "$or takes a non-empty array of filters"}),
        ({"$or": [{"type": "x"}, 3]}, {"/$or/1": "each item is a filter (an object)"}),
        ({"$or": [{"type": "x"}, {}]}, {"/$or/1": "an empty condition"}),
        ({"$not": "x"}, {"/$not": "$not takes a filter (an object)"}),
        ({"data": {"a": {"$not": 5}}}, {"/data/a/$not": "$not takes a filter (an object)"}),
        ({"$or": [{"data": {"a/b": {"$in": 1}}}]}, {"/$or/0/data/a~1b/$in": "$in takes an array"}),
        (
            {"type": {"$gt": False}, "data": {"x": {"$exist": "yes"}}},
            {"/type/$gt": "compares", "/data/x/$exist": "true or false"},
        ),
    ],
)
def test_malformed_filters_name_each_problem(spec: Any, problems: dict[str, str]) -> None:
    with pytest.raises(ValidationFailed) as raised:
        parse_filter(spec)
    found = {e.loc: e.msg for e in raised.value.errors}
    assert found.keys() == problems.keys()
    for pointer, fragment in problems.items():
        assert fragment in found[pointer]


def test_pointers_are_below_where_the_filter_sits() -> None:
    with pytest.raises(ValidationFailed) as raised:
        parse_filter({"data": {"a": {"$in": 1}}}, "/filter")
    assert [e.loc for e in raised.value.errors] == ["/filter/data/a/$in"]


def test_limits_on_depth_and_size() -> None:
    deep: dict[str, Any] = {"$exist": True}
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(ValidationFailed, match="invalid") as raised:
        parse_filter({"data": deep})
    assert "at most 32 levels" in raised.value.errors[0].msg
    wide = {"data": {f"f{i}": i for i in range(1001)}}
    with pytest.raises(ValidationFailed) as raised:
        parse_filter(wide)
    assert "at most 1000 conditions" in raised.value.errors[0].msg


def test_paths_name_every_field_and_where_the_filter_says_it() -> None:
    compiled = parse_filter(
        {"data": {"total": {"$gt": 1}, "$or": [{"c/d": 1}]}, "$not": {"key": "x"}}
    )
    assert [(p.tokens, p.pointer) for p in compiled.paths] == [
        (("data",), "/data"),
        (("data", "total"), "/data/total"),
        (("data", "c/d"), "/data/$or/0/c~1d"),
        (("key",), "/$not/key"),
    ]


def test_stored_filters_are_compiled_once() -> None:
    text = '{"data": {"total": {"$gte": 100}}}'
    first = stored_filter(text)
    assert first is not None
    assert stored_filter(text) is first
    assert first.matches("t", None, {"total": 100})
    assert not first.matches("t", None, {"total": 99})


def test_a_stored_filter_a_later_rule_refuses_matches_everything() -> None:
    assert stored_filter('{"data": {"a": {"$regex": "x"}}}') is None


DEEP_LIST: Any = 1
for _ in range(34):
    DEEP_LIST = [DEEP_LIST]


@pytest.mark.parametrize(
    ("spec", "pointer", "fragment"),
    [
        ({"data": {"a": float("nan")}}, "/data/a", "NaN and Infinity"),
        ({"data": {"a": {"$gt": float("inf")}}}, "/data/a/$gt", "NaN and Infinity"),
        ({"data": {"a": {"$in": [1, 2**64]}}}, "/data/a/$in", "beyond 64 bits"),
        ({"data": {"a": {"$eq": DEEP_LIST}}}, "/data/a/$eq", "at most 32 levels"),
    ],
)
def test_values_a_filter_could_not_store_are_refused(
    spec: dict[str, Any], pointer: str, fragment: str
) -> None:
    with pytest.raises(ValidationFailed) as raised:
        parse_filter(spec)
    assert [e.loc for e in raised.value.errors] == [pointer]
    assert fragment in raised.value.errors[0].msg
