"""Property: when the checker calls a pair BACKWARD compatible, documents valid
under the old schema are valid under the new one.

Schemas come from a small grammar (types, bounds, enums, objects open and
closed, arrays, ``anyOf``, ``$ref`` to ``$defs``); the new schema is usually a
mutation of the old one, so that many pairs are compatible. Documents are
drawn to be valid under the old schema, near its bounds, with extra
properties where the content model is open; those that miss are skipped.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain.compat import is_subset

NAMES = ["a", "b", "c"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.5, 2.0, 2.5]),
    st.sampled_from(["", "x", "yy", "zzz"]),
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NAMES + ["d"]), inner, max_size=3),
    ),
    max_leaves=6,
)
Schema = dict[str, Any] | bool


# -- schemas ------------------------------------------------------------------------


def _number(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    bound = st.integers(-3, 3) if kind == "integer" else st.sampled_from([-2, -1, 0, 0.5, 1, 2])
    keys = st.sampled_from(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"])
    return st.dictionaries(keys, bound, max_size=2).map(lambda b: {"type": kind, **b})


def _string() -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(["minLength", "maxLength"])
    return st.dictionaries(keys, st.integers(0, 3), max_size=2).map(
        lambda b: {"type": "string", **b}
    )


LEAVES: st.SearchStrategy[Schema] = st.one_of(
    _number("integer"),
    _number("number"),
    _string(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({"type": ["string", "null"]}),
    st.lists(SCALARS, min_size=1, max_size=3).map(lambda v: {"enum": v}),
    SCALARS.map(lambda v: {"const": v}),
    st.just({}),
    st.booleans(),
)


def _object(inner: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    return st.builds(
        lambda props, required, extra: {
            "type": "object",
            "properties": props,
            "required": sorted(set(required)),
            **({} if extra == "absent" else {"additionalProperties": extra}),
        },
        st.dictionaries(st.sampled_from(NAMES), inner, max_size=3),
        st.lists(st.sampled_from(NAMES), max_size=2),
        st.one_of(st.just("absent"), st.booleans(), inner),
    )


def _array(inner: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    return st.builds(
        lambda items, prefix, limits, unique: {
            "type": "array",
            "items": items,
            **({"prefixItems": prefix} if prefix else {}),
            **limits,
            **({"uniqueItems": True} if unique else {}),
        },
        inner,
        st.lists(inner, max_size=2),
        st.dictionaries(st.sampled_from(["minItems", "maxItems"]), st.integers(0, 3), max_size=2),
        st.booleans(),
    )


def _nested(inner: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    return st.one_of(
        _object(inner),
        _array(inner),
        st.lists(inner, min_size=1, max_size=2).map(lambda b: {"anyOf": b}),
        st.just({"$ref": "#/$defs/shared"}),
    )


SCHEMAS: st.SearchStrategy[Schema] = st.recursive(LEAVES, _nested, max_leaves=6)
ROOTS = st.builds(
    lambda body, shared: {**body, "$defs": {"shared": shared}} if isinstance(body, dict) else body,
    st.one_of(SCHEMAS, _object(LEAVES), _array(LEAVES)),
    LEAVES,
)


@st.composite
def mutated(draw: st.DrawFn, schema: Any) -> Any:
    """``schema`` with a few random local changes (or a fresh schema now and then)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(SCHEMAS)
    if isinstance(schema, list):
        return [draw(mutated(s)) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: draw(mutated(v)) if k in NESTED else v for k, v in schema.items()}
    for k in ("properties", "$defs"):
        if isinstance(out.get(k), dict):
            out[k] = {name: draw(mutated(v)) for name, v in out[k].items()}
    return draw(st.sampled_from(MUTATIONS))(draw, out)


NESTED = ("items", "anyOf", "prefixItems", "additionalProperties")


def _same(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    return s


def _bound(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    keys = [
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    ]
    return {**s, draw(st.sampled_from(keys)): draw(st.integers(0, 3))}


def _drop(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    if not s:
        return s
    gone = draw(st.sampled_from(sorted(s)))
    return {k: v for k, v in s.items() if k != gone}


def _require(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    if s.get("type") != "object":
        return s
    return {**s, "required": sorted(set(draw(st.lists(st.sampled_from(NAMES), max_size=3))))}


def _add_property(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    if s.get("type") != "object":
        return s
    return {
        **s,
        "properties": {**s.get("properties", {}), draw(st.sampled_from(NAMES)): draw(LEAVES)},
    }


def _content_model(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    if s.get("type") != "object":
        return s
    return {**s, "additionalProperties": draw(st.one_of(st.booleans(), LEAVES))}


def _retype(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    if "type" not in s:
        return s
    kinds = ["integer", "number", "string", ["number", "null"], ["integer", "string"]]
    return {**s, "type": draw(st.sampled_from(kinds))}


def _unique(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    return {**s, "uniqueItems": draw(st.booleans())} if s.get("type") == "array" else s


def _enum(draw: st.DrawFn, s: dict[str, Any]) -> dict[str, Any]:
    if "enum" not in s:
        return s
    return {**s, "enum": draw(st.lists(SCALARS, min_size=1, max_size=4))}


MUTATIONS = [
    _same,
    _same,
    _bound,
    _drop,
    _require,
    _add_property,
    _content_model,
    _retype,
    _unique,
    _enum,
]


# -- documents ----------------------------------------------------------------------


def _resolve(schema: Any, root: Any) -> Any:
    for _ in range(5):
        if isinstance(schema, dict) and "$ref" in schema and isinstance(root, dict):
            schema = root.get("$defs", {}).get("shared", True)
    return schema


@st.composite
def document(draw: st.DrawFn, schema: Any, root: Any, depth: int = 0) -> Any:
    """A value meant to be valid under ``schema`` (it may not be; callers filter)."""
    schema = _resolve(schema, root)
    if schema is False or depth > 4:
        return None
    if schema is True or not isinstance(schema, dict) or draw(st.integers(0, 19)) == 0:
        return draw(ANY_JSON)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    if "anyOf" in schema:
        return draw(document(draw(st.sampled_from(schema["anyOf"])), root, depth + 1))
    kinds = schema.get("type")
    kind = draw(st.sampled_from(kinds)) if isinstance(kinds, list) else kinds
    return draw(_typed(kind, schema, root, depth))


def _typed(kind: Any, schema: dict[str, Any], root: Any, depth: int) -> st.SearchStrategy[Any]:
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -4))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 4))
        near = st.sampled_from([low, high, low + 1, high - 1, (low + high) / 2, 0, 0.5])
        return near.map(lambda v: float(v) if kind == "number" else int(v))
    if kind == "string":
        return st.text(alphabet="ab", min_size=schema.get("minLength", 0), max_size=4)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "object":
        return _object_doc(schema, root, depth)
    if kind == "array":
        return _array_doc(schema, root, depth)
    return ANY_JSON


@st.composite
def _object_doc(draw: st.DrawFn, schema: dict[str, Any], root: Any, depth: int) -> Any:
    doc = {}
    props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
    for name in schema.get("required", []):
        doc[name] = draw(document(props.get(name, extra), root, depth + 1))
    for name, sub in props.items():
        if name not in doc and draw(st.booleans()):
            doc[name] = draw(document(sub, root, depth + 1))
    if extra is not False:
        for name in draw(st.lists(st.sampled_from(NAMES + ["d"]), min_size=1, max_size=3)):
            if name not in schema.get("properties", {}):
                doc[name] = draw(document(extra, root, depth + 1))
    return doc


@st.composite
def _array_doc(draw: st.DrawFn, schema: dict[str, Any], root: Any, depth: int) -> Any:
    prefix = schema.get("prefixItems", [])
    low = schema.get("minItems", 0)
    size = draw(st.integers(low, max(low, schema.get("maxItems", 4))))
    items = [
        draw(document(prefix[i] if i < len(prefix) else schema.get("items", True), root, depth + 1))
        for i in range(size)
    ]
    if items and draw(st.booleans()):
        items.append(items[-1])  # duplicates, for uniqueItems
    return items


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    old = draw(ROOTS)
    return old, draw(mutated(old))


def _validator(schema: Any) -> jsonschema_rs.Validator | None:
    try:
        return jsonschema_rs.validator_for(schema, validate_formats=False, offline=True)
    except jsonschema_rs.ValidationError:
        return None


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pair=pairs(), data=st.data())
def test_backward_compatible_pairs_accept_every_old_document(
    pair: tuple[Any, Any], data: st.DataObject
) -> None:
    old, new = pair
    old_check, new_check = _validator(old), _validator(new)
    if old_check is None or new_check is None or is_subset(old, new):
        return
    for _ in range(16):
        doc = data.draw(document(old, old))
        if old_check.is_valid(doc):
            assert new_check.is_valid(doc), (old, new, doc)


def test_the_generator_yields_compatible_and_incompatible_pairs() -> None:
    verdicts: list[bool] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(pair=pairs())
    def collect(pair: tuple[Any, Any]) -> None:
        old, new = pair
        if _validator(old) is not None and _validator(new) is not None:
            verdicts.append(not is_subset(old, new))

    collect()
    assert sum(verdicts) >= 15, "too few compatible pairs to test anything"
    assert len(verdicts) - sum(verdicts) >= 15
