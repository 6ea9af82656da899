"""Schema compatibility with the Confluent Schema Registry meanings, for JSON Schema.

A schema stands for the set of documents it accepts, and every mode is a
subset question, answered by :func:`is_subset`::

    BACKWARD   new reads old: every document the old schema accepts, the new
               one accepts too            is_subset(old, new)
    FORWARD    old reads new              is_subset(new, old)
    FULL       both
    *_TRANSITIVE  against every earlier version; otherwise the latest only
    NONE       no check

``is_subset(narrow, wide)`` returns one :class:`Breaking` per reason it cannot
prove the inclusion: a change that turns documents away, or a construct it
cannot reason about (a changed ``pattern``, ``oneOf``, ``not``, ``if``,
``patternProperties`` that differ, ``$ref`` outside the schema, ...). An empty
answer is a proof; the checker refuses rather than guesses, so it may reject
a compatible change, never accept an incompatible one. Identical subschemas
are compatible whatever they contain. The object and array keywords live in
:mod:`app.domain.compat_containers`, the number and string keywords in
:mod:`app.domain.compat_scalars`; what they share, in
:mod:`app.domain.compat_base`; what one node allows (types, values, bounds), in
:mod:`app.domain.compat_values`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from app.domain import compat_containers as containers
from app.domain import compat_scalars as scalars
from app.domain.compat_base import Breaking, Checker
from app.domain.compat_values import (
    ALL_TYPES,
    NUMERIC,
    finite_values,
    follow,
    names,
    show,
    types_of,
)
from app.domain.event_schemas import Compatibility, Schema
from app.domain.schema_nodes import (
    DYNAMIC,
    Doc,
    Node,
    asserts,
    only_ref,
    resolve,
    same,
    same_keyword,
)
from app.errors import FieldError

MAX_STEPS = 50_000
MAX_VALUE_REASONS = 5
# Compared only when identical, wherever they appear (self-contained groups).
OPAQUE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("not",),
    ("oneOf",),
    ("if", "then", "else"),
)
# Keywords of the other draft: the validator may or may not apply them.
FOREIGN_2020 = ("additionalItems",)
FOREIGN_7 = (
    "prefixItems",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedItems",
    "unevaluatedProperties",
    "minContains",
    "maxContains",
)


class _TooComplex(Exception):
    pass


def check(
    mode: Compatibility, new: Schema, previous: Sequence[tuple[int, Schema]]
) -> list[FieldError]:
    """Why ``new`` breaks ``mode`` against ``previous`` (``(version, schema)``, oldest first).

    Each reason's ``loc`` points into the new schema.
    """
    if mode is Compatibility.NONE or not previous:
        return []
    against = previous if mode.value.endswith("_TRANSITIVE") else previous[-1:]
    backward = mode.value.startswith(("BACKWARD", "FULL"))
    forward = mode.value.startswith(("FORWARD", "FULL"))
    found: list[FieldError] = []
    for version, old in reversed(against):
        name = f"version {version}"
        if backward:
            for b in is_subset(old, new, narrow_name=name, wide_name="the new schema"):
                found.append(FieldError(b.wide_loc, b.msg))
        if forward:
            for b in is_subset(new, old, narrow_name="the new schema", wide_name=name):
                found.append(FieldError(b.narrow_loc, b.msg))
    return list(dict.fromkeys(found))


def is_subset(
    narrow: Schema, wide: Schema, *, narrow_name: str = "old", wide_name: str = "new"
) -> list[Breaking]:
    """Why some document ``narrow`` accepts may be rejected by ``wide``; empty if none is."""
    checker = SubsetChecker(Doc(narrow), Doc(wide), narrow_name, wide_name)
    try:
        return checker.sub(Node.root_of(checker.narrow), Node.root_of(checker.wide))
    except (_TooComplex, RecursionError):
        return [Breaking("", "", "cannot decide: the schemas are too complex to compare")]


class SubsetChecker(Checker):
    """One ``is_subset`` question: the two documents, their names, and the work done."""

    def __init__(self, narrow: Doc, wide: Doc, narrow_name: str, wide_name: str) -> None:
        self.narrow, self.wide = narrow, wide
        self.n_name, self.w_name = narrow_name, wide_name
        # Pairs being compared, with the document depth they were met at: meeting
        # one again deeper down proves nothing new (a guarded cycle); at the same
        # depth it is a cycle that never reaches a document, and is refused.
        self._assumed: dict[tuple[str, str], int] = {}
        self._depth = 0
        self._steps = 0

    # -- reasons --------------------------------------------------------------

    def br(self, n: Node, w: Node, msg: str, n_kw: str = "", w_kw: str = "") -> Breaking:
        return Breaking(n.at(n_kw) if n_kw else n.path, w.at(w_kw) if w_kw else w.path, msg)

    def opaque(self, n: Node, w: Node, keyword: str) -> Breaking:
        return self.br(
            n,
            w,
            f"cannot decide whether '{keyword}' in {self.w_name} accepts everything "
            f"{self.n_name} accepts; only an identical '{keyword}' can be compared",
            w_kw=keyword,
        )

    # -- the relation ---------------------------------------------------------

    def sub(self, n: Node, w: Node) -> list[Breaking]:
        """Reasons some document ``n`` accepts may be rejected by ``w``."""
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise _TooComplex()
        n_target, w_target = follow(n), follow(w)
        if n_target is None or w_target is None:
            bad = n if n_target is None else w
            return [
                self.br(
                    n,
                    w,
                    f"cannot decide: '$ref' {bad.keywords['$ref']!r} is not a "
                    "reference to a definition inside the schema",
                )
            ]
        n, w = n_target, w_target
        if not asserts(w) or n.schema is False:
            return []
        if same(n, w):
            return []
        key = (n.path, w.path)
        if key in self._assumed:
            if self._assumed[key] < self._depth:
                return []
            return [
                self.br(
                    n, w, "cannot decide: a '$ref' cycle that does not descend into the document"
                )
            ]
        if w.schema is False:
            return [self.br(n, w, f"{self.w_name} accepts nothing here, {self.n_name} does")]
        self._assumed[key] = self._depth
        try:
            found = self._compare(n, w)
            if found and self._alternatives_fit(n, w):
                return []
            return found
        finally:
            del self._assumed[key]

    def descend(self, n: Node, w: Node) -> list[Breaking]:
        """:meth:`sub` for the schemas of a property or an item of the document."""
        self._depth += 1
        try:
            return self.sub(n, w)
        finally:
            self._depth -= 1

    def fits(self, n: Node, w: Node) -> bool:
        return not self.sub(n, w)

    def _compare(self, n: Node, w: Node) -> list[Breaking]:
        values = finite_values(n)
        if values is not None:
            return self._values_fit(n, w, values)
        types = types_of(n)
        found = self._type(n, w, types) + self._enum(n, w)
        if types & NUMERIC:
            found += scalars.numbers(self, n, w, types <= {"integer"})
        if "string" in types:
            found += scalars.limits(self, n, w, "minLength", "maxLength", "characters")
            found += scalars.pattern(self, n, w)
        if "array" in types:
            found += containers.arrays(self, n, w)
        if "object" in types:
            found += containers.objects(self, n, w)
        return found + self._applicators(n, w)

    def _alternatives_fit(self, n: Node, w: Node) -> bool:
        """Whether a part of ``n`` that holds all its documents fits ``w`` on its own."""
        k = n.keywords
        for keyword in ("anyOf", "oneOf"):
            branches = k.get(keyword)
            if isinstance(branches, list) and all(
                self.fits(n.child(keyword, i), w) for i in range(len(branches))
            ):
                return True
        branches = k.get("allOf")
        if isinstance(branches, list) and any(
            self.fits(n.child("allOf", i), w) for i in range(len(branches))
        ):
            return True
        if "$ref" in k and not only_ref(n):
            target = resolve(n)
            return target is not None and self.fits(target, w)
        return False

    # -- any type -------------------------------------------------------------

    def _values_fit(self, n: Node, w: Node, values: list[Any]) -> list[Breaking]:
        found = []
        for value in values:
            if n.doc.accepts(n, value) is False:
                continue  # not a document of n after all
            accepted = w.doc.accepts(w, value)
            if accepted is None:
                return [self.br(n, w, f"cannot decide whether {self.w_name} accepts {show(value)}")]
            if not accepted:
                found.append(
                    self.br(n, w, f"{self.n_name} accepts {show(value)}, {self.w_name} rejects it")
                )
        return found[:MAX_VALUE_REASONS]

    def _type(self, n: Node, w: Node, types: frozenset[str]) -> list[Breaking]:
        wanted = w.keywords.get("type")
        if wanted is None:
            return []
        allowed = {wanted} if isinstance(wanted, str) else set(wanted)
        if types == ALL_TYPES and not allowed >= {
            "null",
            "boolean",
            "number",
            "string",
            "array",
            "object",
        }:
            return [
                self.br(
                    n,
                    w,
                    f"{self.w_name} accepts only {names(allowed)}, {self.n_name} accepts any type",
                    w_kw="type",
                )
            ]
        return [
            self.br(
                n,
                w,
                f"{self.n_name} accepts {t} values, {self.w_name} does not",
                n_kw="type",
                w_kw="type",
            )
            for t in sorted(types)
            if t not in allowed and not (t == "integer" and "number" in allowed)
        ]

    def _enum(self, n: Node, w: Node) -> list[Breaking]:
        return [
            self.br(
                n,
                w,
                f"{self.w_name} accepts only the values its '{kw}' lists, "
                f"{self.n_name} accepts others",
                w_kw=kw,
            )
            for kw in ("enum", "const")
            if kw in w.keywords
        ]

    def _applicators(self, n: Node, w: Node) -> list[Breaking]:
        found: list[Breaking] = []
        k = w.keywords
        for i in range(len(k.get("allOf") or [])):
            found += self.sub(n, w.child("allOf", i))
        if "$ref" in k:  # beside other keywords (Draft 2020-12): both apply
            target = resolve(w)
            found += self.sub(n, target) if target is not None else [self.opaque(n, w, "$ref")]
        if isinstance(k.get("anyOf"), list) and not self._any_of_fits(n, w):
            found.append(self.opaque(n, w, "anyOf"))
        foreign = FOREIGN_7 if w.doc.draft7 else FOREIGN_2020
        groups = OPAQUE_GROUPS + tuple((kw,) for kw in (*DYNAMIC, *foreign))
        return found + self.opaque_groups(n, w, groups)

    def _any_of_fits(self, n: Node, w: Node) -> bool:
        if same_keyword(n, w, "anyOf"):
            return True
        branches = range(len(w.keywords["anyOf"]))
        if any(self.fits(n, w.child("anyOf", i)) for i in branches):
            return True
        own = n.keywords.get("anyOf") or n.keywords.get("oneOf")
        keyword = "anyOf" if "anyOf" in n.keywords else "oneOf"
        return isinstance(own, list) and all(
            any(self.fits(n.child(keyword, j), w.child("anyOf", i)) for i in branches)
            for j in range(len(own))
        )

    def opaque_groups(self, n: Node, w: Node, groups: Iterable[tuple[str, ...]]) -> list[Breaking]:
        """Keywords compared only for identity: each group present in ``w`` must be in ``n``."""
        found = []
        for group in groups:
            present = [kw for kw in group if kw in w.keywords]
            if present and not all(same_keyword(n, w, kw) for kw in group):
                found.append(self.opaque(n, w, present[0]))
        return found
