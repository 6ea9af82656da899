"""What the compatibility checker and its keyword families share.

:mod:`app.domain.compat` holds the checker and dispatches to the object and
array keywords in :mod:`app.domain.compat_containers` and the number and
string keywords in :mod:`app.domain.compat_scalars`, which call back into it
through the :class:`Checker` interface below; neither module imports the other
for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from app.domain.schema_nodes import Node


@dataclass(frozen=True, slots=True)
class Breaking:
    """One reason: pointers into the narrow and the wide schema, and what breaks."""

    narrow_loc: str
    wide_loc: str
    msg: str


class Checker(Protocol):
    """The subset checker as a keyword family sees it (names and the calls back)."""

    n_name: str
    w_name: str

    def br(self, n: Node, w: Node, msg: str, n_kw: str = "", w_kw: str = "") -> Breaking:
        """A reason at ``n``/``w`` (or at their keywords ``n_kw``/``w_kw``)."""
        ...

    def opaque(self, n: Node, w: Node, keyword: str) -> Breaking:
        """The reason for a ``keyword`` that can only be compared when identical."""
        ...

    def descend(self, n: Node, w: Node) -> list[Breaking]:
        """The reasons for the schemas of a property or an item of the document."""
        ...

    def fits(self, n: Node, w: Node) -> bool:
        """Whether every document ``n`` accepts, ``w`` accepts too."""
        ...

    def opaque_groups(self, n: Node, w: Node, groups: Iterable[tuple[str, ...]]) -> list[Breaking]:
        """Reasons for keyword groups that can only be compared when identical."""
        ...
