"""The compatibility checker's object and array keywords (see :mod:`app.domain.compat`).

Objects: every property name is governed, on each side, by ``properties``,
else a matching ``patternProperties`` entry, else ``additionalProperties``
(absent: ``true``, the open content model). Adding a property to an open
schema is therefore not backward compatible: old documents may already carry
it with any value. Different ``patternProperties`` cannot be compared.

Arrays: position ``i`` is governed by the tuple keyword (``prefixItems``;
Draft 7: ``items`` as a list) and the rest by ``items`` (Draft 7:
``additionalItems``).
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs

from app.domain import compat_scalars as scalars
from app.domain.compat_base import Breaking, Checker
from app.domain.event_schemas import compile_validator
from app.domain.schema_nodes import Node, asserts, same, same_keyword


def arrays(c: Checker, n: Node, w: Node) -> list[Breaking]:
    found = scalars.limits(c, n, w, "minItems", "maxItems", "items")
    most = _count(n.keywords.get("maxItems"))
    unique = n.keywords.get("uniqueItems") is True or (most is not None and most <= 1)
    if w.keywords.get("uniqueItems") is True and not unique:
        found.append(
            c.br(
                n,
                w,
                f"uniqueItems: {c.w_name} rejects arrays with duplicate items, {c.n_name} does not",
                w_kw="uniqueItems",
            )
        )
    found += _items(c, n, w)
    found += c.opaque_groups(n, w, [("contains", "minContains", "maxContains")])
    return found + _unevaluated(c, n, w, "unevaluatedItems")


def _positions(node: Node) -> tuple[list[Node], Node]:
    """The schemas of the leading positions, and the schema of every later one."""
    k = node.keywords
    if node.doc.draft7:
        items = k.get("items")
        if isinstance(items, list):
            return [node.child("items", i) for i in range(len(items))], node.child(
                "additionalItems"
            )
        return [], node.child("items")
    prefix = k.get("prefixItems")
    count = len(prefix) if isinstance(prefix, list) else 0
    return [node.child("prefixItems", i) for i in range(count)], node.child("items")


def _items(c: Checker, n: Node, w: Node) -> list[Breaking]:
    w_lead, w_rest = _positions(w)
    if not w_lead and not asserts(w_rest):
        return []
    n_lead, n_rest = _positions(n)
    most = _count(n.keywords.get("maxItems"))
    span = max(len(n_lead), len(w_lead))
    found: list[Breaking] = []
    for i in range(span if most is None else min(span, most)):
        found += c.descend(
            n_lead[i] if i < len(n_lead) else n_rest, w_lead[i] if i < len(w_lead) else w_rest
        )
    if most is None or most > span:
        found += c.descend(n_rest, w_rest)
    return found


def objects(c: Checker, n: Node, w: Node) -> list[Breaking]:
    required = set(_strings(n.keywords.get("required")))
    found = _content(c, n, w) + _required(c, n, w, required)
    found += scalars.limits(
        c, n, w, "minProperties", "maxProperties", "properties", len(required), _closed_count(n)
    )
    found += _dependencies(c, n, w, required)
    found += _property_names(c, n, w)
    return found + _unevaluated(c, n, w, "unevaluatedProperties")


def _content(c: Checker, n: Node, w: Node) -> list[Breaking]:
    """``properties``, ``patternProperties`` and ``additionalProperties`` together."""
    wk, nk = w.keywords, n.keywords
    if not any(k in wk for k in ("properties", "patternProperties", "additionalProperties")):
        return []
    if (nk.get("patternProperties") or wk.get("patternProperties")) and not same_keyword(
        n, w, "patternProperties"
    ):
        return [c.opaque(n, w, "patternProperties")]
    patterns = _Patterns(n, wk.get("patternProperties") or {})
    if patterns.broken:
        return [c.opaque(n, w, "patternProperties")]
    n_props, w_props = _names(nk.get("properties")), _names(wk.get("properties"))
    n_extra, w_extra = n.child("additionalProperties"), w.child("additionalProperties")
    found: list[Breaking] = []
    for name in w_props:
        found += _new_property(c, n, w, name, n_props, patterns, n_extra)
    for name in n_props:
        if name in w_props or patterns.matching(name):
            continue  # governed alike, or by the same pattern schemas on both sides
        reasons = c.descend(n.child("properties", name), w_extra)
        if reasons and w_extra.schema is False:
            msg = (
                f"property '{name}' is not in {c.w_name}, "
                "which does not accept properties it does not list"
            )
            reasons = [c.br(n.child("properties", name), w, msg, w_kw="additionalProperties")]
        found += reasons
    reasons = c.descend(n_extra, w_extra)
    if reasons and not asserts(n_extra):
        msg = (
            f"{c.w_name} restricts properties it does not list, {c.n_name} accepts any "
            "(additionalProperties)"
        )
        reasons = [c.br(n, w, msg, w_kw="additionalProperties")]
    return found + reasons


def _new_property(
    c: Checker,
    n: Node,
    w: Node,
    name: str,
    n_props: list[str],
    patterns: _Patterns,
    n_extra: Node,
) -> list[Breaking]:
    target = w.child("properties", name)
    if name in n_props:
        return c.descend(n.child("properties", name), target)
    matching = patterns.matching(name)
    if matching:
        if any(not c.descend(m, target) for m in matching):
            return []
        return [c.opaque(n, w, "patternProperties")]
    reasons = c.descend(n_extra, target)
    if reasons and not asserts(n_extra):
        msg = (
            f"property '{name}' is not in {c.n_name}, whose documents may already carry it "
            f"with any value (its additionalProperties is not false); "
            f"{c.w_name} constrains it"
        )
        return [c.br(n, target, msg)]
    return reasons


class _Patterns:
    """``patternProperties`` of the narrow side, identical on both sides."""

    def __init__(self, n: Node, declared: Any) -> None:
        self._n = n
        self._checks: dict[str, jsonschema_rs.Validator] = {}
        self.broken = False
        for pattern in declared if isinstance(declared, dict) else {}:
            try:
                self._checks[pattern] = compile_validator({"pattern": pattern})
            except (jsonschema_rs.ValidationError, ValueError):
                self.broken = True

    def matching(self, name: str) -> list[Node]:
        return [
            self._n.child("patternProperties", p)
            for p, check in self._checks.items()
            if check.is_valid(name)
        ]


def _required(c: Checker, n: Node, w: Node, required: set[str]) -> list[Breaking]:
    declared = w.keywords.get("required")
    return [
        c.br(
            n,
            w,
            f"property '{name}' is required by {c.w_name}, not by {c.n_name}",
            w_kw=f"required/{i}",
        )
        for i, name in enumerate(_strings(declared))
        if name not in required
    ]


def _dependency_keywords(node: Node) -> tuple[str, ...]:
    # What the validator applies: Draft 7 knows only ``dependencies``.
    if node.doc.draft7:
        return ("dependencies",)
    return ("dependentRequired", "dependentSchemas", "dependencies")


def _dependency_rules(
    node: Node,
) -> tuple[dict[str, set[str]], dict[str, tuple[str, Node]]]:
    """Property -> properties it requires, and property -> (keyword, schema it brings in)."""
    requires: dict[str, set[str]] = {}
    schemas: dict[str, tuple[str, Node]] = {}
    for keyword in _dependency_keywords(node):
        declared = node.keywords.get(keyword)
        for prop, rule in (declared if isinstance(declared, dict) else {}).items():
            if isinstance(rule, list):
                requires.setdefault(prop, set()).update(_strings(rule))
            elif keyword != "dependentRequired":
                schemas[prop] = (keyword, node.child(keyword, prop))
    return requires, schemas


def _dependencies(c: Checker, n: Node, w: Node, required: set[str]) -> list[Breaking]:
    n_requires, n_schemas = _dependency_rules(n)
    w_requires, w_schemas = _dependency_rules(w)
    found = []
    for prop, needed in w_requires.items():
        missing = needed - required - n_requires.get(prop, set())
        if missing:
            msg = (
                f"{c.w_name} requires {sorted(missing)} whenever '{prop}' is present, "
                f"{c.n_name} does not"
            )
            found.append(c.br(n, w, msg))
    for prop, (keyword, schema) in w_schemas.items():
        own = n_schemas.get(prop)
        if own is None or not same(own[1], schema):
            found.append(c.opaque(n, w, keyword))
    return found


def _property_names(c: Checker, n: Node, w: Node) -> list[Breaking]:
    wanted = w.child("propertyNames")
    if not asserts(wanted):
        return []
    if "propertyNames" in n.keywords and c.fits(n.child("propertyNames"), wanted):
        return []
    names = _closed_names(n)
    if names is not None and all(w.doc.accepts(wanted, name) for name in names):
        return []
    return [c.opaque(n, w, "propertyNames")]


def _unevaluated(c: Checker, n: Node, w: Node, keyword: str) -> list[Breaking]:
    # What is "unevaluated" depends on every sibling keyword, so only a whole
    # identical schema (checked before we get here) can be compared.
    if keyword in w.keywords and asserts(w.child(keyword)):
        return [c.opaque(n, w, keyword)]
    return []


def _closed_names(node: Node) -> list[str] | None:
    """The only property names ``node`` accepts, if it lists them all."""
    k = node.keywords
    if k.get("additionalProperties") is False and not k.get("patternProperties"):
        return _names(k.get("properties"))
    return None


def _closed_count(node: Node) -> int | None:
    names = _closed_names(node)
    return None if names is None else len(names)


def _names(declared: Any) -> list[str]:
    return list(declared) if isinstance(declared, dict) else []


def _strings(declared: Any) -> list[str]:
    return [s for s in declared if isinstance(s, str)] if isinstance(declared, list) else []


def _count(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None
