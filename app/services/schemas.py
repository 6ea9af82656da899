"""Event types, their schema versions, and validating event data at ingest.

Registering a version: it must be a valid JSON Schema (422), then it is
checked against earlier versions by the type's compatibility mode (409 with
one reason each). Registering a schema identical to an existing version
answers that version and stores nothing (Confluent does the same).

At ingest, :meth:`SchemaService.check` resolves the event's schema version
(default: the type's latest) and validates its data. Both lookups are in
memory on the hot path:

* the latest version of every type with schemas, one entry of a
  :class:`~app.services.fresh_cache.FreshCache`: never served more than
  ``refresh_seconds`` (1 s) after its read began, reloaded in the background
  while events come, and at once when an event names a version it does not
  know yet (unless read in the last 0.1 s). A version registered through this
  process is seen at once; through another process within about 1 s.
* a compiled validator per (type, version), built on first use; versions
  never change, so these are only evicted when there are too many.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from app.domain import compat
from app.domain.event_schemas import (
    Compatibility,
    EventTypeCreate,
    EventTypePatch,
    Schema,
    Validator,
    canonical,
    compile_validator,
    data_errors,
    schema_problems,
)
from app.errors import Conflict, FieldError, NotFound, ValidationFailed
from app.services.fresh_cache import FreshCache
from app.store import event_types as store
from app.store.database import Database
from app.store.event_types import EventType, StoredSchema

__all__ = ["EventType", "IncompatibleSchema", "SchemaService"]

MISS_SECONDS = 0.1
# The catalogue's one key in its cache: every type's latest version.
CATALOGUE = "latest"
MAX_VALIDATORS = 1024
MAX_RACES = 5


class IncompatibleSchema(Conflict):
    """A schema version that breaks its type's compatibility mode (409)."""

    slug = "incompatible-schema"

    def __init__(self, detail: str, errors: list[FieldError]) -> None:
        super().__init__(detail)
        self.errors = errors


class SchemaService:
    def __init__(
        self,
        db: Database,
        *,
        refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._catalogue: FreshCache[str, dict[str, int]] = FreshCache(
            self._load_catalogue, seconds=refresh_seconds, clock=clock
        )
        self._registering = asyncio.Lock()
        self._validators: OrderedDict[tuple[str, int], Validator] = OrderedDict()

    # -- the registry ---------------------------------------------------------

    async def create_type(self, body: EventTypeCreate) -> EventType:
        return await store.create_type(
            self._db,
            name=body.name,
            description=body.description,
            compatibility=body.compatibility.value,
            now=datetime.now(UTC),
        )

    async def update_type(self, name: str, body: EventTypePatch) -> EventType:
        changes = body.model_dump(exclude_unset=True, mode="json")
        if changes.get("compatibility", "") is None:
            raise ValidationFailed(
                "compatibility cannot be null", [FieldError("/compatibility", "must not be null")]
            )
        found = await store.update_type(self._db, name, changes)
        if found is None:
            raise NotFound(f"no event type {name}")
        return found

    async def get_type(self, name: str) -> EventType:
        found = await store.get_type(self._db, name)
        if found is None:
            raise NotFound(f"no event type {name}")
        return found

    async def list_types(
        self, *, after: str | None, limit: int
    ) -> tuple[list[EventType], str | None]:
        return await store.list_types(self._db, after_name=after, limit=limit)

    async def get_schema(self, name: str, version: int | None) -> tuple[int, Schema]:
        """Version ``version`` of ``name``'s schema (None: the latest)."""
        stored = await store.get_schema(self._db, name, version)
        if stored is None:
            await self.get_type(name)
            raise NotFound(f"event type {name} has no schema version {version or 'yet'}")
        schema: Schema = orjson.loads(stored.text)
        return stored.version, schema

    async def latest_schemas(self, names: list[str]) -> list[Schema] | None:
        """The latest schema of each type, or None when one of them has none."""
        found: list[Schema] = []
        for name in dict.fromkeys(names):
            stored = await store.get_schema(self._db, name, None)
            if stored is None:
                return None
            found.append(orjson.loads(stored.text))
        return found

    async def register(self, name: str, schema: Any) -> tuple[int, bool]:
        """Add ``schema`` as ``name``'s next version; ``(version, created)``."""
        problems = await asyncio.to_thread(schema_problems, schema)
        if problems:
            raise ValidationFailed(
                "the schema is not a valid JSON Schema (Draft 2020-12 or Draft 7)",
                [FieldError("/schema" + p.loc, p.msg) for p in problems],
            )
        text = canonical(schema)
        async with self._registering:  # other processes race; the store notices
            return await self._register(name, schema, text)

    async def _register(self, name: str, schema: Schema, text: str) -> tuple[int, bool]:
        for _ in range(MAX_RACES):
            event_type = await self.get_type(name)
            versions = await store.versions_of(self._db, name)
            for known in versions:
                if known.text == text:
                    return known.version, False
            await asyncio.to_thread(self._check_compatible, event_type, schema, versions)
            after = versions[-1].version if versions else None
            version = await store.add_schema(
                self._db, name, text, after=after, now=datetime.now(UTC)
            )
            if version is not None:
                self._catalogue.forget()  # a read under way may predate this version
                return version, True
        raise Conflict(f"event type {name} is being changed concurrently; try again")

    @staticmethod
    def _check_compatible(
        event_type: EventType, schema: Schema, versions: list[StoredSchema]
    ) -> None:
        mode = Compatibility(event_type.compatibility)
        previous = [(v.version, orjson.loads(v.text)) for v in versions]
        problems = compat.check(mode, schema, previous)
        if problems:
            raise IncompatibleSchema(
                f"the schema breaks {mode.value} compatibility of event type {event_type.name}",
                [FieldError("/schema" + p.loc, p.msg) for p in problems],
            )

    # -- ingest -----------------------------------------------------------------

    def unschematized(self, event_type: str, requested: int | None) -> bool:
        """Known without a trip anywhere: the event names no version and its type
        has no schema, so :meth:`check` would answer ``(None, [])``."""
        cached = self._catalogue.hit(CATALOGUE)
        return requested is None and cached is not None and event_type not in cached.value

    async def check(
        self, event_type: str, requested: int | None, data: Any, data_loc: str, version_loc: str
    ) -> tuple[int | None, list[FieldError]]:
        """The schema version an event gets, and why its data fails that schema."""
        latest = await self._latest_version(event_type, requested)
        if latest is None:
            if requested is None:
                return None, []
            return None, [FieldError(version_loc, f"event type {event_type} has no schemas")]
        if requested is not None and requested > latest:
            msg = f"event type {event_type} has no schema version {requested} (latest: {latest})"
            return None, [FieldError(version_loc, msg)]
        version = requested or latest
        validator = await self._validator(event_type, version)
        return version, data_errors(validator, data, data_loc)

    async def _latest_version(self, event_type: str, requested: int | None) -> int | None:
        latest = (await self._catalogue.get(CATALOGUE)).get(event_type)
        if requested is not None and (latest is None or requested > latest):
            # Registered elsewhere since the catalogue was read, perhaps.
            catalogue = await self._catalogue.get(CATALOGUE, max_age=MISS_SECONDS)
            latest = catalogue.get(event_type)
        return latest

    async def _load_catalogue(self, _: str) -> dict[str, int]:
        return await store.latest_versions(self._db)

    async def close(self) -> None:
        """No more background reloads; waits for one under way, so that it does
        not outlive the database it reads (at shutdown)."""
        await self._catalogue.close()

    async def _validator(self, event_type: str, version: int) -> Validator:
        key = (event_type, version)
        found = self._validators.get(key)
        if found is not None:
            self._validators.move_to_end(key)
            return found
        stored = await store.get_schema(self._db, event_type, version)
        if stored is None:
            raise NotFound(f"event type {event_type} has no schema version {version}")
        validator = compile_validator(orjson.loads(stored.text))
        self._validators[key] = validator
        if len(self._validators) > MAX_VALIDATORS:
            self._validators.popitem(last=False)
        return validator
