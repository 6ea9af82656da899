"""Readiness: the database answers and is at the migrations' head."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import StoreUnavailable
from app.store.database import Database
from app.store.migrations import current_revision, head_revision


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    revision: str | None
    detail: str  # why not, when not ready


class HealthService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def readiness(self) -> Readiness:
        try:
            revision = await current_revision(self._db)
        except StoreUnavailable as exc:
            return Readiness(False, None, exc.detail)
        head = head_revision()
        if revision != head:
            return Readiness(
                False, revision, f"the database is at migration {revision}, not {head}"
            )
        return Readiness(True, revision, "")
