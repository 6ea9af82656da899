"""The compatibility checker's number and string keywords (see :mod:`app.domain.compat`),
and the minimum/maximum count pairs that strings, arrays and objects share.

A bound of the wide schema must be implied by the narrow one's (an integer
schema's ``exclusiveMinimum: 0`` implies ``minimum: 1``); ``multipleOf`` by a
multiple; a different ``pattern`` cannot be compared.
"""

from __future__ import annotations

from app.domain.compat_base import Breaking, Checker
from app.domain.compat_values import as_count, as_number, bound_of, multiple, show, smaller, within
from app.domain.schema_nodes import Node


def numbers(c: Checker, n: Node, w: Node, integers: bool) -> list[Breaking]:
    found = []
    for kw in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        limit = as_number(w.keywords.get(kw))
        if limit is None:
            continue
        upper = kw in ("maximum", "exclusiveMaximum")
        bound = bound_of(n.keywords, upper)
        if not within(bound, (limit, kw.startswith("exclusive")), upper, integers):
            own = "none" if bound is None else show(bound[0])
            found.append(
                c.br(
                    n,
                    w,
                    f"{kw}: {c.w_name} has {show(limit)}, "
                    f"{c.n_name}'s {'upper' if upper else 'lower'} "
                    f"bound is {own}",
                    w_kw=kw,
                )
            )
    step = as_number(w.keywords.get("multipleOf"))
    if step is not None and not multiple(as_number(n.keywords.get("multipleOf")), step, integers):
        found.append(
            c.br(
                n,
                w,
                f"multipleOf: {c.w_name} requires multiples of {show(step)}, {c.n_name} does not",
                w_kw="multipleOf",
            )
        )
    return found


def pattern(c: Checker, n: Node, w: Node) -> list[Breaking]:
    wanted = w.keywords.get("pattern")
    if wanted is None or n.keywords.get("pattern") == wanted:
        return []
    if "pattern" in n.keywords:
        return [c.opaque(n, w, "pattern")]
    return [
        c.br(
            n,
            w,
            f"{c.w_name} requires strings to match {wanted!r}, {c.n_name} does not",
            w_kw="pattern",
        )
    ]


def limits(
    c: Checker,
    n: Node,
    w: Node,
    low: str,
    high: str,
    unit: str,
    n_low: int = 0,
    n_high: int | None = None,
) -> list[Breaking]:
    """A minimum/maximum count pair (lengths, items, properties)."""
    found = []
    least = max(as_count(n.keywords.get(low)) or 0, n_low)
    most = smaller(as_count(n.keywords.get(high)), n_high)
    need = as_count(w.keywords.get(low))
    if need is not None and least < need:
        found.append(
            c.br(
                n,
                w,
                f"{low}: {c.w_name} requires at least {need} {unit}, {c.n_name} accepts {least}",
                w_kw=low,
            )
        )
    cap = as_count(w.keywords.get(high))
    if cap is not None and (most is None or most > cap):
        own = "any number" if most is None else str(most)
        found.append(
            c.br(
                n,
                w,
                f"{high}: {c.w_name} accepts at most {cap} {unit}, {c.n_name} accepts {own}",
                w_kw=high,
            )
        )
    return found
