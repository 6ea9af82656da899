"""What one JSON Schema node allows, as the compatibility checker reads it: its
types, its finite set of values, its numeric and size bounds, and how to name
them in a reason (:mod:`app.domain.compat`)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import orjson

from app.domain.schema_nodes import Node, only_ref, resolve

ALL_TYPES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
NUMERIC = frozenset({"integer", "number"})


def follow(node: Node) -> Node | None:
    """``node``, or what its ``$ref`` stands for when the reference is all it says."""
    if not only_ref(node):
        return node
    return resolve(node)


def types_of(node: Node) -> frozenset[str]:
    """The JSON types ``node``'s ``type`` keyword lets through (``number`` includes integers)."""
    declared = node.keywords.get("type")
    if declared is None:
        return ALL_TYPES
    return frozenset([declared] if isinstance(declared, str) else declared)


def finite_values(node: Node) -> list[Any] | None:
    """The values ``node`` can take if they are few (``const``, ``enum``, null, booleans)."""
    k = node.keywords
    if "const" in k:
        return [k["const"]]
    if isinstance(k.get("enum"), list):
        return list(k["enum"])
    types = types_of(node)
    if types <= {"null", "boolean"}:
        return ([None] if "null" in types else []) + ([False, True] if "boolean" in types else [])
    return None


Bound = tuple[int | float, bool]  # (limit, exclusive)


def as_number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_count(value: Any) -> int | None:
    number = as_number(value)
    return int(number) if number is not None else None


def smaller(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def bound_of(keywords: dict[str, Any], upper: bool) -> Bound | None:
    """The tightest lower (or upper) bound a schema sets on numbers."""
    inclusive = as_number(keywords.get("maximum" if upper else "minimum"))
    exclusive = as_number(keywords.get("exclusiveMaximum" if upper else "exclusiveMinimum"))
    candidates: list[Bound] = []
    if inclusive is not None:
        candidates.append((inclusive, False))
    if exclusive is not None:
        candidates.append((exclusive, True))
    if not candidates:
        return None
    if upper:
        return min(candidates, key=lambda b: (b[0], not b[1]))
    return max(candidates, key=lambda b: (b[0], b[1]))


def within(bound: Bound | None, limit: Bound, upper: bool, integers: bool) -> bool:
    """Whether every number inside ``bound`` is inside ``limit`` (same side)."""
    if bound is None:
        return False
    if integers:
        return (
            _int_bound(bound, upper) <= _int_bound(limit, upper)
            if upper
            else (_int_bound(bound, upper) >= _int_bound(limit, upper))
        )
    (own, own_excl), (lim, lim_excl) = bound, limit
    if upper:
        return own < lim or (own == lim and (own_excl or not lim_excl))
    return own > lim or (own == lim and (own_excl or not lim_excl))


def _int_bound(bound: Bound, upper: bool) -> Fraction:
    """The inclusive integer bound an inclusive or exclusive number bound means."""
    value, exclusive = Fraction(bound[0]), bound[1]
    if upper:
        floor = value.__floor__()
        return Fraction(floor - 1 if exclusive and floor == value else floor)
    ceil = value.__ceil__()
    return Fraction(ceil + 1 if exclusive and ceil == value else ceil)


def multiple(own: int | float | None, step: int | float, integers: bool) -> bool:
    wanted = Fraction(str(step))
    if wanted == 0:
        return False
    if own is not None and (Fraction(str(own)) / wanted).denominator == 1:
        return True
    return integers and (1 / wanted).denominator == 1


def names(types: Iterable[str]) -> str:
    return ", ".join(sorted(types))


def show(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."
