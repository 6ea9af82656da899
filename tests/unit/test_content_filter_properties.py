"""Property: the compiled evaluator agrees with a naive reference on generated
filters and events.

The reference below reads the filter text afresh on every call, resolves
every field from the document's root by its full path, and spells each
operator out from the contract's words (JSON types by name, MongoDB's
missing-field rule as "no values"). It shares no code with
``app.domain.content_filters``. Filters and documents are drawn from the same
small vocabulary, so that fields exist, values collide and every operator
meets every JSON type, arrays and missing fields included.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain.content_filters import parse_filter

NAMES = ["a", "b"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(0, 2),
    st.sampled_from([0.0, 1.0, 1.5]),
    st.sampled_from(["", "a", "ab", "ba"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NAMES), inner, min_size=1, max_size=2),
    ),
    max_leaves=6,
)
# Arrays of objects, so that paths go through arrays and name several values.
ROWS = st.lists(
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from([0, 1, "a", [1], None])),
    min_size=1,
    max_size=3,
).flatmap(lambda rows: st.sampled_from([rows, [{"a": rows}], [{"a": rows[:1]}, {"a": rows[1:]}]]))
PLAIN = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=2), max_leaves=3)
STRINGS = st.sampled_from(["", "a", "ab", "ba"])
ORDERED = st.one_of(st.integers(0, 2), st.sampled_from([0.0, 1.5]), STRINGS)


def _value_operators() -> list[st.SearchStrategy[tuple[str, Any]]]:
    return [
        st.tuples(st.sampled_from(["$eq", "$neq"]), st.one_of(SCALARS, JSON)),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ORDERED),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(st.one_of(SCALARS, JSON), max_size=4)),
        st.tuples(st.just("$exist"), st.booleans()),
        st.tuples(st.sampled_from(["$startsWith", "$endsWith"]), STRINGS),
    ]


OBJECT: st.SearchStrategy[dict[str, Any]] = st.deferred(
    lambda: st.lists(
        st.one_of(
            st.tuples(st.sampled_from(NAMES), CONDITION),
            st.one_of(*_value_operators()),
            st.tuples(st.sampled_from(["$and", "$or"]), st.lists(OBJECT, min_size=1, max_size=2)),
            st.tuples(st.just("$not"), OBJECT),
        ),
        min_size=1,
        max_size=2,
    ).map(dict)
)
CONDITION: st.SearchStrategy[Any] = st.deferred(lambda: st.one_of(PLAIN, OBJECT))
ROOT_ITEM: st.SearchStrategy[dict[str, Any]]
ROOT: st.SearchStrategy[dict[str, Any]] = st.deferred(
    lambda: st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["type", "key", "data"]), CONDITION),
            st.tuples(
                st.sampled_from(["$and", "$or"]), st.lists(ROOT_ITEM, min_size=1, max_size=2)
            ),
            st.tuples(st.just("$not"), ROOT_ITEM),
        ),
        max_size=2,
    ).map(dict)
)
ROOT_ITEM = ROOT.filter(bool)
EVENTS = st.tuples(
    st.sampled_from(["a", "ab", "order.created"]),
    st.one_of(st.none(), STRINGS),
    st.one_of(st.dictionaries(st.sampled_from(NAMES), JSON, min_size=1, max_size=2), JSON),
)


# -- the reference --------------------------------------------------------------------


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def same(a: Any, b: Any) -> bool:
    if kind(a) != kind(b):
        return False
    if kind(a) == "array":
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if kind(a) == "object":
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def values_at(value: Any, path: list[str]) -> list[Any]:
    """Every value the path names, from the root; passing an array, the field
    of each of its elements (no values: the field is missing)."""
    if not path:
        return [value]
    name, rest = path[0], path[1:]
    if kind(value) == "object":
        return values_at(value[name], rest) if name in value else []
    if kind(value) == "array":
        found = []
        for element in value:
            if kind(element) == "object" and name in element:
                found += values_at(element[name], rest)
        return found
    return []


def holds_for_some(values: list[Any], test: Any) -> bool:
    for value in values:
        if test(value):
            return True
        if kind(value) == "array":
            for element in value:
                if test(element):
                    return True
    return False


def compare(op: str, value: Any, arg: Any) -> bool:
    if kind(value) != kind(arg) or kind(arg) not in ("number", "string"):
        return False
    return bool(
        {
            "$gt": value > arg,
            "$gte": value >= arg,
            "$lt": value < arg,
            "$lte": value <= arg,
        }[op]
    )


def operator(op: str, arg: Any, values: list[Any]) -> bool:
    if op == "$eq":
        return holds_for_some(values, lambda v: same(v, arg))
    if op == "$neq":
        return not operator("$eq", arg, values)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return holds_for_some(values, lambda v: compare(op, v, arg))
    if op == "$in":
        return holds_for_some(values, lambda v: any(same(v, m) for m in arg))
    if op == "$nin":
        return not operator("$in", arg, values)
    if op == "$exist":
        return bool((len(values) > 0) == arg)
    if op == "$startsWith":
        return holds_for_some(values, lambda v: kind(v) == "string" and v[: len(arg)] == arg)
    assert op == "$endsWith"
    return holds_for_some(values, lambda v: kind(v) == "string" and v[len(v) - len(arg) :] == arg)


def reference(spec: Any, root: Any, path: list[str]) -> bool:
    values = values_at(root, path)
    if kind(spec) != "object":
        return operator("$eq", spec, values)
    for name, arg in spec.items():
        if name == "$and":
            ok = all(reference(item, root, path) for item in arg)
        elif name == "$or":
            ok = any(reference(item, root, path) for item in arg)
        elif name == "$not":
            ok = not reference(arg, root, path)
        elif name.startswith("$"):
            ok = operator(name, arg, values)
        else:
            ok = reference(arg, root, [*path, name])
        if not ok:
            return False
    return True


# -- the property ------------------------------------------------------------------------


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=ROOT, event=EVENTS)
def test_the_evaluator_agrees_with_the_reference(
    spec: dict[str, Any], event: tuple[str, str | None, Any]
) -> None:
    event_type, key, data = event
    expected = reference(spec, {"type": event_type, "key": key, "data": data}, [])
    assert parse_filter(spec).matches(event_type, key, data) is expected


@settings(max_examples=200, deadline=None)
@given(condition=CONDITION, data=JSON)
def test_a_condition_on_data_agrees_with_the_reference(condition: Any, data: Any) -> None:
    spec = {"data": condition}
    expected = reference(spec, {"type": "t", "key": None, "data": data}, [])
    assert parse_filter(spec).matches("t", None, data) is expected


@settings(max_examples=600, deadline=None)
@given(
    path=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3),
    condition=st.one_of(SCALARS, st.one_of(*_value_operators()).map(lambda pair: dict([pair]))),
    data=st.dictionaries(st.sampled_from(NAMES), st.one_of(JSON, ROWS), min_size=1, max_size=2),
)
def test_one_condition_at_a_path_agrees_with_the_reference(
    path: list[str], condition: Any, data: Any
) -> None:
    for name in reversed(path):
        condition = {name: condition}
    spec = {"data": condition}
    expected = reference(spec, {"type": "t", "key": None, "data": data}, [])
    assert parse_filter(spec).matches("t", None, data) is expected
