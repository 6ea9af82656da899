"""Whether a JSON Schema lets a filter's field exist: typos caught at subscribe time.

A path under ``data`` is impossible when the schema closes an object on the
way (``additionalProperties: false`` and no property or pattern of that
name) or gives a value on the way a type that has no fields (a number, a
string...). Everything the walk cannot follow for sure (a reference to another
document, ``if``/``then``, ``not``, ``unevaluatedProperties``, a pattern
Python cannot compile) counts as possible: the check refuses only what no
document valid against the schema can contain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from app.domain.content_filters import ContentFilter, FieldPath
from app.domain.event_schemas import Schema
from app.domain.schema_nodes import Doc, Node, resolve

MAX_WALK = 64
_OBJECT_WORDS = ("properties", "additionalProperties", "patternProperties", "required")
_ARRAY_WORDS = ("items", "prefixItems", "additionalItems", "contains")


def impossible_paths(content_filter: ContentFilter, schemas: Sequence[Schema]) -> list[FieldPath]:
    """The filter's paths under ``data`` that no schema of ``schemas`` allows
    (the shortest of each: a field below an impossible one is not repeated)."""
    docs = [Doc(s) for s in schemas]
    found: list[FieldPath] = []
    for path in content_filter.paths:
        if len(path.tokens) < 2 or path.tokens[0] != "data":
            continue
        if any(path.tokens[: len(f.tokens)] == f.tokens for f in found):
            continue
        if not any(allows(Node.root_of(doc), path.tokens[1:]) for doc in docs):
            found.append(path)
    return found


def allows(node: Node, tokens: tuple[str, ...], walked: int = 0) -> bool:
    """Whether a document valid against ``node`` may have the field at ``tokens``."""
    if node.schema is False:
        return False  # no value at all: not even the field itself
    if not tokens or walked > MAX_WALK:
        return True
    if not isinstance(node.schema, dict):
        return True  # true, or not a schema the walk understands
    words = node.keywords
    walked += 1
    if "$ref" in words:
        target = resolve(node)
        if target is not None and not allows(target, tokens, walked):
            return False
        if node.doc.draft7:
            return True  # Draft 7 ignores the keywords beside $ref
    every = words.get("allOf")
    if isinstance(every, list) and not all(
        allows(node.child("allOf", i), tokens, walked) for i in range(len(every))
    ):
        return False
    for word in ("anyOf", "oneOf"):
        some = words.get(word)
        if (
            isinstance(some, list)
            and some
            and not any(allows(node.child(word, i), tokens, walked) for i in range(len(some)))
        ):
            return False
    return _by_type(node, tokens, walked)


def _by_type(node: Node, tokens: tuple[str, ...], walked: int) -> bool:
    words = node.keywords
    declared = words.get("type")
    if isinstance(declared, str):
        types: set[Any] | None = {declared}
    elif isinstance(declared, list):
        types = set(declared)
    else:
        types = None
    if types is None:
        # No type: the keywords say what the value is; none say: anything.
        as_object = any(w in words for w in _OBJECT_WORDS)
        as_array = any(w in words for w in _ARRAY_WORDS)
        if not as_object and not as_array:
            return True
    else:
        as_object, as_array = "object" in types, "array" in types
    return (as_object and _object_allows(node, tokens, walked)) or (
        as_array and _array_allows(node, tokens, walked)
    )


def _object_allows(node: Node, tokens: tuple[str, ...], walked: int) -> bool:
    words = node.keywords
    name, rest = tokens[0], tokens[1:]
    properties = words.get("properties")
    if isinstance(properties, dict) and name in properties:
        return allows(node.child("properties", name), rest, walked)
    patterns = words.get("patternProperties")
    if isinstance(patterns, dict):
        for pattern in patterns:
            try:
                if re.search(pattern, name):
                    return True
            except (re.error, TypeError):
                return True
    if "additionalProperties" in words:
        return allows(node.child("additionalProperties"), rest, walked)
    return True


def _array_allows(node: Node, tokens: tuple[str, ...], walked: int) -> bool:
    """A field of an array is a field of its elements (see content_filters)."""
    words = node.keywords
    elements: list[Node] = []
    for word in ("prefixItems", "items"):
        listed = words.get(word)
        if isinstance(listed, list):
            elements.extend(node.child(word, i) for i in range(len(listed)))
    rest = "additionalItems" if isinstance(words.get("items"), list) else "items"
    if rest not in words:
        return True  # elements beyond those listed may be anything
    elements.append(node.child(rest))
    return any(allows(element, tokens, walked) for element in elements)
