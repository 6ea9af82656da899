"""Secrets at rest, column by column: the one place values are sealed and opened.

A table's sealed columns are named once (:class:`SealedColumns`); its store
module seals a row's values on insert and update (:meth:`SealedColumns.seal`)
and hands out what it reads as :class:`Sealed`, which opens on demand, so a
row whose secret cannot be opened still lists, and only what needs the secret
meets the error. The keys are the database's (``Database.keyring``).
:func:`reseal` is ``eventrelay rotate-encryption-key``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import RowMapping, select, update

from app.domain.sealing import SEALED_PREFIX, Keyring, sealing_key_id
from app.errors import SecretUnavailable
from app.store import schema
from app.store.database import Database

RESEAL_BATCH = 200
_NO_KEYS = Keyring()


@dataclass(frozen=True, slots=True)
class Sealed:
    """A stored value; :meth:`open` gives the plaintext or raises SecretUnavailable.
    Its repr never shows the value."""

    stored: str = field(repr=False)
    aad: bytes = field(repr=False)
    what: str = field(compare=False)
    keyring: Keyring = field(compare=False, repr=False)

    def open(self) -> str:
        return self.keyring.open(self.stored, self.aad, self.what)

    @classmethod
    def plain(cls, value: str) -> Sealed:
        """A value held in the clear, opened as it is (for fakes in tests)."""
        return cls(value, b"", "a value", _NO_KEYS)


@dataclass(frozen=True, slots=True)
class SealedColumns:
    """The columns of ``table`` stored sealed, each bound to its row by the
    table's ``id`` column: a value moved to another row or column does not open."""

    table: str
    columns: tuple[str, ...]

    def aad(self, column: str, row_id: str) -> bytes:
        return f"eventrelay:{self.table}.{column}:{row_id}".encode()

    def what(self, column: str, row_id: str) -> str:
        return f"{self.table}.{column} of {row_id}"

    def seal(self, keyring: Keyring, row_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (a row or some of its columns) as they are stored."""
        row = dict(values)
        for column in self.columns:
            if row.get(column) is not None:
                row[column] = keyring.seal(row[column], self.aad(column, row_id))
        return row

    def read(self, keyring: Keyring, row_id: str, column: str, stored: str | None) -> Sealed | None:
        """A stored value, to be opened when it is needed."""
        if stored is None:
            return None
        return Sealed(stored, self.aad(column, row_id), self.what(column, row_id), keyring)

    def open(self, keyring: Keyring, row_id: str, column: str, stored: str) -> str:
        return keyring.open(stored, self.aad(column, row_id), self.what(column, row_id))


SUBSCRIPTIONS = SealedColumns("subscriptions", ("secret", "previous_secret", "destination_url"))

# Every sealed column of the database: what `rotate-encryption-key` goes through.
SEALED_TABLES: tuple[SealedColumns, ...] = (SUBSCRIPTIONS,)


async def keys_missing(db: Database) -> Counter[str]:
    """How many stored values are sealed with each key the database's keyring lacks."""
    missing: Counter[str] = Counter()
    held = set(db.keyring.key_ids)
    async with db.read() as conn:
        for sealed in SEALED_TABLES:
            table = schema.metadata.tables[sealed.table]
            for name in sealed.columns:
                column = table.c[name]
                rows = await conn.execute(select(column).where(column.startswith(SEALED_PREFIX)))
                for (stored,) in rows:
                    kid = sealing_key_id(stored) or "unknown"
                    if kid not in held:
                        missing[kid] += 1
    return missing


@dataclass
class ResealReport:
    changed: int = 0  # rows written again with the first key
    unreadable: list[str] = field(default_factory=list)  # why some rows could not be


async def reseal(db: Database, sealed: SealedColumns, *, batch: int = RESEAL_BATCH) -> ResealReport:
    """Write every value of ``sealed`` that is not sealed with the first key
    (older keys, plaintext) again with it; a transaction per ``batch`` rows.

    Each batch is read, and the rows in it that need writing are locked in ID
    order and read again in one transaction before they are written (``FOR NO
    KEY UPDATE``, which leaves foreign-key checks alone, so ingest never waits;
    SQLite's writer is alone). A change made meanwhile (a secret rotation, which
    locks its row the same way) is therefore either read here or made after this
    batch's write: never lost. Rows already sealed with the first key are neither
    locked nor written, so a second run changes nothing.
    """
    keyring = db.keyring
    if keyring.current is None:
        raise ValueError("no encryption key to seal with")
    table = schema.metadata.tables[sealed.table]
    key = table.c.id
    columns = [table.c[name] for name in sealed.columns]
    report = ResealReport()
    after = ""
    while True:
        async with db.read() as conn:
            query = select(key, *columns).where(key > after).order_by(key).limit(batch)
            rows = (await conn.execute(query)).all()
        stale = [r.id for r in rows if _needs_reseal(keyring, sealed, r._mapping)]
        if stale:
            async with db.write() as conn:
                query = select(key, *columns).where(key.in_(stale)).order_by(key)
                for row in await conn.execute(query.with_for_update(key_share=True)):
                    changes = _resealed(keyring, sealed, row._mapping, report)
                    if changes:
                        await conn.execute(update(table).where(key == row.id).values(**changes))
                        report.changed += 1
        if len(rows) < batch:
            return report
        after = rows[-1].id


def _needs_reseal(keyring: Keyring, sealed: SealedColumns, row: RowMapping) -> bool:
    return any(
        row[column] is not None and not keyring.is_current(row[column]) for column in sealed.columns
    )


def _resealed(
    keyring: Keyring, sealed: SealedColumns, row: RowMapping, report: ResealReport
) -> dict[str, str]:
    changes: dict[str, str] = {}
    for column in sealed.columns:
        stored = row[column]
        if stored is None or keyring.is_current(stored):
            continue
        try:
            plaintext = sealed.open(keyring, row["id"], column, stored)
        except SecretUnavailable as exc:
            report.unreadable.append(exc.detail)
            return {}
        changes[column] = keyring.seal(plaintext, sealed.aad(column, row["id"]))
    return changes
