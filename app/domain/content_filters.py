"""Content filters of subscriptions: which events a subscription wants, by content.

A filter matches the document ``{"type", "key", "data"}`` of an event (an
event without a key has ``"key": null``, as everywhere in the API). It is an
object of conditions that must all hold:

* a field name and a condition on that field's value; the condition is a plain
  value (``$eq``) or an object of fields and operators (nested objects match
  nested fields);
* an operator and its argument: ``$eq $neq $gt $gte $lt $lte $in $nin $exist
  $startsWith $endsWith`` on the value, ``$and $or`` (arrays of conditions)
  and ``$not`` (a condition) around conditions on the same value.

Matching follows MongoDB's query rules. A path is resolved to the values it
names (none: the field is missing); passing through an array it names the
field of each element. A positive operator holds when one of those values
holds it, or, for an array, one of its elements. ``$neq`` and ``$nin`` are the
negations of ``$eq`` and ``$in``, so a missing field matches them and only
them, ``$exist: false``, and a ``$not`` around anything else. A comparison
with a value of another JSON type is no match (``true`` is not a number).

:func:`parse_filter` checks a filter and compiles it once into closures;
:meth:`ContentFilter.matches` then runs without looking at the filter's
text again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from app.errors import FieldError, ValidationFailed

__all__ = [
    "ContentFilter",
    "FieldPath",
    "document",
    "json_equal",
    "parse_filter",
    "stored_filter",
]

# A test of the value at a path: a JSON value, MISSING, or _Many values.
Test = Callable[[Any], bool]

DOCUMENT_FIELDS = ("type", "key", "data")
MAX_DEPTH = 32
MAX_CONDITIONS = 1000
MAX_MEMBERS = 1000
INT_MIN, UINT_MAX = -(2**63), 2**64 - 1  # what orjson, and so the store, can write
COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = (
    "$eq",
    "$neq",
    *COMPARISONS,
    "$in",
    "$nin",
    "$exist",
    "$startsWith",
    "$endsWith",
    "$and",
    "$or",
    "$not",
)


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A field a filter names: its path in the document and where the filter says it."""

    tokens: tuple[str, ...]
    pointer: str


@dataclass(frozen=True, slots=True)
class ContentFilter:
    spec: dict[str, Any]
    paths: tuple[FieldPath, ...]
    _test: Test = field(repr=False, compare=False)

    def matches(self, event_type: str, key: str | None, data: Any) -> bool:
        return self._test(document(event_type, key, data))

    def matches_document(self, doc: dict[str, Any]) -> bool:
        """Match a :func:`document` built once for every filter an event meets."""
        return self._test(doc)


def document(event_type: str, key: str | None, data: Any) -> dict[str, Any]:
    """What a filter is matched against."""
    return {"type": event_type, "key": key, "data": data}


def parse_filter(spec: Any, at: str = "") -> ContentFilter:
    """Check and compile a filter; 422 naming each problem by its JSON pointer
    (below ``at``, where the filter sits in the request)."""
    compiler = _Compiler(at)
    if not isinstance(spec, dict):
        compiler.problem(at, "a filter is a JSON object")
        test: Test = _never
    else:
        test = compiler.conditions(spec, at, (), 0)
    if compiler.problems:
        raise ValidationFailed("the filter is invalid", compiler.problems)
    return ContentFilter(spec, tuple(compiler.paths), test)


@lru_cache(maxsize=4096)
def stored_filter(text: str) -> ContentFilter | None:
    """A stored filter, compiled once however many flushes read it. Stored
    filters were checked when written; one a later rule refuses matches every
    event rather than lose its deliveries (None: no filter)."""
    try:
        return parse_filter(orjson.loads(text))
    except (ValidationFailed, orjson.JSONDecodeError):
        return None


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``true`` is not ``1``."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return a is b
    if (ta is int or ta is float) and (tb is int or tb is float):
        return bool(a == b)
    if ta is dict and tb is dict:
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if ta is list and tb is list:
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return ta is tb and bool(a == b)


# -- evaluation -----------------------------------------------------------------


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # the value of a field that is not there


class _Many(list[Any]):
    """The values a path names through an array, when there are several: never
    a JSON value (those are plain lists), never empty (that is MISSING)."""

    __slots__ = ()


def _never(_: Any) -> bool:
    return False


def _always(_: Any) -> bool:
    return True


def _child(value: Any, name: str) -> Any:
    """The value of field ``name`` below ``value``; through an array, the field
    of each element (MISSING when none has it)."""
    kind = type(value)
    if kind is dict:
        return value.get(name, MISSING)
    if kind is list:
        found = [e[name] for e in value if type(e) is dict and name in e]
    elif kind is _Many:
        found = []
        for each in value:
            child = _child(each, name)
            if type(child) is _Many:
                found.extend(child)
            elif child is not MISSING:
                found.append(child)
    else:
        return MISSING
    if not found:
        return MISSING
    return found[0] if len(found) == 1 else _Many(found)


def _any(predicate: Callable[[Any], bool]) -> Test:
    """A positive operator: the value, or one element of an array value, holds
    it (one of them, for several values). MISSING holds no predicate."""

    def test(value: Any) -> bool:
        kind = type(value)
        if kind is _Many:
            return any(test(v) for v in value)
        if predicate(value):
            return True
        return kind is list and any(predicate(e) for e in value)

    return test


def _equal_to(arg: Any) -> Callable[[Any], bool]:
    kind = type(arg)
    if kind is str:
        return lambda v: type(v) is str and v == arg
    if kind is bool or arg is None:
        return lambda v: v is arg
    if kind is int or kind is float:
        return lambda v: (type(v) is int or type(v) is float) and v == arg
    return lambda v: json_equal(v, arg)


def _member_of(members: list[Any]) -> Callable[[Any], bool]:
    strings = {m for m in members if type(m) is str}
    numbers = {m for m in members if type(m) is int or type(m) is float}
    flags = {m for m in members if type(m) is bool}
    null = any(m is None for m in members)
    nested = [m for m in members if type(m) is dict or type(m) is list]

    def predicate(v: Any) -> bool:
        kind = type(v)
        if kind is str:
            return v in strings
        if kind is int or kind is float:
            return v in numbers
        if kind is bool:
            return v in flags
        if v is None:
            return null
        return any(json_equal(v, m) for m in nested)

    return predicate


def _ordered(op: str, arg: int | float | str) -> Callable[[Any], bool]:
    if type(arg) is str:
        kinds: tuple[type, ...] = (str,)
    else:
        kinds = (int, float)
    if op == "$gt":
        return lambda v: type(v) in kinds and v > arg
    if op == "$gte":
        return lambda v: type(v) in kinds and v >= arg
    if op == "$lt":
        return lambda v: type(v) in kinds and v < arg
    return lambda v: type(v) in kinds and v <= arg


def _all_of(tests: list[Test]) -> Test:
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda v: first(v) and second(v)
    if len(tests) == 3:
        first, second, third = tests
        return lambda v: first(v) and second(v) and third(v)
    return lambda v: all(t(v) for t in tests)


def _field(name: str, test: Test) -> Test:
    return lambda v: test(v.get(name, MISSING) if type(v) is dict else _child(v, name))


def _negation(test: Test) -> Test:
    return lambda v: not test(v)


# -- checking and compiling -------------------------------------------------------


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _unstorable_value(value: Any, depth: int = 0) -> str | None:
    """Why a value in a filter cannot be stored as JSON like the rest (None: it can)."""
    if depth > MAX_DEPTH:
        return f"a value in a filter nests at most {MAX_DEPTH} levels"
    if type(value) is float and not math.isfinite(value):
        return "NaN and Infinity are not JSON"
    if type(value) is int and not INT_MIN <= value <= UINT_MAX:
        return "an integer beyond 64 bits cannot be stored"
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = _unstorable_value(item, depth + 1)
        if found:
            return found
    return None


class _Compiler:
    def __init__(self, at: str) -> None:
        self.at = at
        self.problems: list[FieldError] = []
        self.paths: list[FieldPath] = []
        self.count = 0

    def problem(self, pointer: str, message: str) -> Test:
        self.problems.append(FieldError(pointer or "/", message))
        return _never

    def conditions(self, obj: dict[str, Any], at: str, path: tuple[str, ...], depth: int) -> Test:
        """An object of fields and operators, all of which must hold."""
        if depth > MAX_DEPTH:
            return self.problem(at, f"a filter nests at most {MAX_DEPTH} levels")
        tests = []
        for name, value in obj.items():
            self.count += 1
            if self.count > MAX_CONDITIONS:
                return self.problem(at, f"a filter has at most {MAX_CONDITIONS} conditions")
            pointer = f"{at}/{_escape(name)}"
            if name.startswith("$"):
                tests.append(self.operator(name, value, pointer, path, depth))
            elif not path and name not in DOCUMENT_FIELDS:
                tests.append(self.problem(pointer, "an event has only type, key and data"))
            else:
                tests.append(self.field(name, value, pointer, path, depth))
        return _all_of(tests)

    def field(self, name: str, value: Any, at: str, path: tuple[str, ...], depth: int) -> Test:
        tokens = (*path, name)
        self.paths.append(FieldPath(tokens, at[len(self.at) :]))
        return _field(name, self.condition(value, at, tokens, depth + 1))

    def condition(self, value: Any, at: str, path: tuple[str, ...], depth: int) -> Test:
        """A plain value (``$eq``) or a non-empty object of fields and operators."""
        if not isinstance(value, dict):
            return self.value_operator("$eq", value, at)
        if not value:
            return self.problem(at, 'an empty condition; {"$eq": {}} matches an empty object')
        return self.conditions(value, at, path, depth)

    def operator(self, op: str, arg: Any, at: str, path: tuple[str, ...], depth: int) -> Test:
        if op in ("$and", "$or"):
            return self.logical(op, arg, at, path, depth)
        if op == "$not":
            if not isinstance(arg, dict):
                return self.problem(at, "$not takes a filter (an object)")
            return _negation(self.condition(arg, at, path, depth + 1))
        if not path:
            return self.problem(at, f"{op} applies to a field; at the top: $and, $or, $not")
        return self.value_operator(op, arg, at)

    def logical(self, op: str, arg: Any, at: str, path: tuple[str, ...], depth: int) -> Test:
        if not isinstance(arg, list) or not arg:
            return self.problem(at, f"{op} takes a non-empty array of filters")
        tests = []
        for i, item in enumerate(arg):
            if not isinstance(item, dict):
                tests.append(self.problem(f"{at}/{i}", "each item is a filter (an object)"))
            else:
                tests.append(self.condition(item, f"{at}/{i}", path, depth + 1))
        if op == "$and":
            return _all_of(tests)
        return lambda v: any(t(v) for t in tests)

    def value_operator(self, op: str, arg: Any, at: str) -> Test:
        unstorable = _unstorable_value(arg)
        if unstorable:
            return self.problem(at, unstorable)
        if op in ("$eq", "$neq"):
            equal = _any(_equal_to(arg))
            return equal if op == "$eq" else _negation(equal)
        if op in COMPARISONS:
            if not (_is_number(arg) or isinstance(arg, str)):
                return self.problem(at, f"{op} compares with a number or a string")
            return _any(_ordered(op, arg))
        if op in ("$in", "$nin"):
            if not isinstance(arg, list) or len(arg) > MAX_MEMBERS:
                return self.problem(at, f"{op} takes an array of at most {MAX_MEMBERS} values")
            member = _any(_member_of(arg))
            return member if op == "$in" else _negation(member)
        if op == "$exist":
            if not isinstance(arg, bool):
                return self.problem(at, "$exist takes true or false")
            return (lambda v: v is not MISSING) if arg else (lambda v: v is MISSING)
        if op in ("$startsWith", "$endsWith"):
            if not isinstance(arg, str):
                return self.problem(at, f"{op} takes a string")
            if op == "$startsWith":
                return _any(lambda v: type(v) is str and v.startswith(arg))
            return _any(lambda v: type(v) is str and v.endswith(arg))
        return self.problem(at, f"unknown operator {op}; the operators are {', '.join(OPERATORS)}")
