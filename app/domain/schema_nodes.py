"""Walking a JSON Schema document for the compatibility checker.

A :class:`Node` is a subschema with its JSON pointer in its document, so
every reason the checker gives can point at the keyword it is about. Only
local JSON-pointer references (``#/$defs/a``, ``#/definitions/a``, ``#``) are
followed; anchors and other forms resolve to nothing and the checker refuses
them. :func:`same` is structural equality that follows references and
ignores annotations: identical subschemas are compatible whatever they hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import jsonschema_rs

from app.domain.event_schemas import Schema, compile_subschemas, is_draft7

ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",  # not asserted (see app.domain.event_schemas)
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "$schema",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "$defs",
        "definitions",
    }
)
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_ONE = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "items",
        "additionalItems",
        "additionalProperties",
        "contains",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
# Resolved against the dynamic scope, so equal text may mean different things.
DYNAMIC = frozenset({"$dynamicRef", "$recursiveRef"})
MAX_REF_CHAIN = 32


class Doc:
    """One schema document: its root, its draft, and validators for its subschemas."""

    __slots__ = ("root", "draft7", "nested_ids", "_validators")

    def __init__(self, root: Schema) -> None:
        self.root = root
        self.draft7 = is_draft7(root)
        # A nested $id moves the base URI of the references below it.
        self.nested_ids = isinstance(root, dict) and any(
            "$id" in s for s in _subschemas(root, top=False)
        )
        self._validators: jsonschema_rs.ValidatorMap | None | bool = False

    def accepts(self, node: Node, value: Any) -> bool | None:
        """Whether ``node`` accepts ``value``, or None when that cannot be evaluated."""
        if isinstance(node.schema, bool):
            return node.schema
        if self._validators is False:
            try:
                self._validators = compile_subschemas(self.root)
            except (jsonschema_rs.ValidationError, ValueError):
                self._validators = None
        if not isinstance(self._validators, jsonschema_rs.ValidatorMap):
            return None
        validator = self._validators.get("#" + node.path)
        return None if validator is None else validator.is_valid(value)


@dataclass(frozen=True, slots=True)
class Node:
    doc: Doc
    schema: Any
    path: str

    @classmethod
    def root_of(cls, doc: Doc) -> Node:
        return cls(doc, doc.root, "")

    @property
    def keywords(self) -> dict[str, Any]:
        return self.schema if isinstance(self.schema, dict) else {}

    def child(self, *tokens: str | int) -> Node:
        """The subschema at ``tokens`` below this node; missing means ``true``."""
        value: Any = self.schema
        path = self.path
        for token in tokens:
            path += "/" + escape(str(token))
            if isinstance(value, dict) and isinstance(token, str):
                value = value.get(token, True)
            elif isinstance(value, list) and isinstance(token, int) and 0 <= token < len(value):
                value = value[token]
            else:
                value = True
        return Node(self.doc, value, path)

    def at(self, suffix: str) -> str:
        """The pointer of ``suffix`` (a keyword, or keyword/index) below this node."""
        return f"{self.path}/{suffix}"


def escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def resolve(node: Node) -> Node | None:
    """The target of ``node``'s local ``$ref`` (following chains), or None."""
    for _ in range(MAX_REF_CHAIN):
        ref = node.keywords.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#") or node.doc.nested_ids:
            return None
        pointer = unquote(ref[1:])
        if pointer and not pointer.startswith("/"):
            return None  # an anchor
        value: Any = node.doc.root
        for token in (_unescape(t) for t in pointer.split("/")[1:]):
            if isinstance(value, dict) and token in value:
                value = value[token]
            elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
                value = value[int(token)]
            else:
                return None
        node = Node(node.doc, value, pointer)
        if not (isinstance(value, dict) and "$ref" in value and only_ref(node)):
            return node
    return None


def only_ref(node: Node) -> bool:
    """Whether ``$ref`` is the only assertion of ``node`` (Draft 7 ignores its siblings)."""
    if "$ref" not in node.keywords:
        return False
    return node.doc.draft7 or all(k in ANNOTATIONS or k == "$ref" for k in node.keywords)


def asserts(node: Node) -> bool:
    """Whether ``node`` may reject anything (false, or a keyword that is not an annotation)."""
    if isinstance(node.schema, bool):
        return not node.schema
    return any(k not in ANNOTATIONS and not k.startswith("x-") for k in node.keywords)


def same(a: Node, b: Node) -> bool:
    """Whether two subschemas accept the same documents because they say the same thing."""
    if a.doc.draft7 != b.doc.draft7:
        return False
    return _same(a, b, set())


def same_keyword(a: Node, b: Node, keyword: str) -> bool:
    """Whether ``keyword`` says the same thing in both nodes (or is absent from both)."""
    if keyword not in a.keywords or keyword not in b.keywords:
        return keyword not in a.keywords and keyword not in b.keywords
    if a.doc.draft7 != b.doc.draft7 or keyword in DYNAMIC:
        return False
    return _same_keyword(a, b, keyword, set())


def _same(a: Node, b: Node, seen: set[tuple[str, str]]) -> bool:
    if isinstance(a.schema, bool) or isinstance(b.schema, bool):
        return a.schema is b.schema or (_trivial(a) and _trivial(b))
    if not isinstance(a.schema, dict) or not isinstance(b.schema, dict):
        return False
    ka, kb = _compared_keys(a), _compared_keys(b)
    if ka != kb or ka & DYNAMIC:
        return False
    if "$ref" in ka:
        ta, tb = resolve(a), resolve(b)
        if ta is None or tb is None:
            return False
        if (ta.path, tb.path) not in seen:
            seen.add((ta.path, tb.path))
            if not _same(ta, tb, seen):
                return False
    return all(_same_keyword(a, b, k, seen) for k in ka - {"$ref"})


def _trivial(node: Node) -> bool:
    return node.schema is True or (isinstance(node.schema, dict) and not asserts(node))


def _compared_keys(node: Node) -> frozenset[str]:
    return frozenset(k for k in node.keywords if k not in ANNOTATIONS)


def _same_keyword(a: Node, b: Node, keyword: str, seen: set[tuple[str, str]]) -> bool:
    va, vb = a.keywords[keyword], b.keywords[keyword]
    if keyword in _SCHEMA_MAPS or (keyword == "dependencies" and isinstance(va, dict)):
        if not isinstance(va, dict) or not isinstance(vb, dict) or va.keys() != vb.keys():
            return False
        return all(
            json_equal(va[k], vb[k])
            if isinstance(va[k], list)
            else _same(a.child(keyword, k), b.child(keyword, k), seen)
            for k in va
        )
    if keyword in _SCHEMA_LISTS or (keyword == "items" and isinstance(va, list)):
        if not isinstance(va, list) or not isinstance(vb, list) or len(va) != len(vb):
            return False
        return all(_same(a.child(keyword, i), b.child(keyword, i), seen) for i in range(len(va)))
    if keyword in _SCHEMA_ONE:
        return _same(a.child(keyword), b.child(keyword), seen)
    return json_equal(va, vb)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``true != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _subschemas(schema: Any, *, top: bool = True) -> Iterator[dict[str, Any]]:
    """Every object subschema of a document (``top``: including the root)."""
    if not isinstance(schema, dict):
        return
    if top:
        yield schema
    for keyword, value in schema.items():
        if keyword in _SCHEMA_MAPS or keyword in ("$defs", "definitions", "dependencies"):
            if isinstance(value, dict):
                for item in value.values():
                    yield from _subschemas(item)
        elif keyword in _SCHEMA_LISTS or (keyword == "items" and isinstance(value, list)):
            if isinstance(value, list):
                for item in value:
                    yield from _subschemas(item)
        elif keyword in _SCHEMA_ONE:
            yield from _subschemas(value)
