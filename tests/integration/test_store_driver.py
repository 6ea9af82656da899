"""Raw statements (``app.store.driver``) run inside the store's transactions, on both databases."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import StoreUnavailable
from app.store import driver
from app.store.database import Database

INSERT = {
    "sqlite": "INSERT INTO idempotency_keys (key, fingerprint, event_id, response_status, "
    "response_body, created_at) VALUES (?, 'f', 'evt_x', 202, '{}', '2026-11-26 00:00:00.000000') "
    "ON CONFLICT (tenant_id, key) DO NOTHING",
    # Both dialects take the keys as one parameter (a JSON array on SQLite).
    "sqlite_returning": "INSERT INTO idempotency_keys (key, fingerprint, event_id, "
    "response_status, response_body, created_at) SELECT value, 'f', 'evt_x', 202, '{}', "
    "'2026-11-26 00:00:00.000000' FROM json_each(?) WHERE true "
    "ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key",
    "postgresql": "INSERT INTO idempotency_keys (key, fingerprint, event_id, response_status, "
    "response_body, created_at) SELECT k, 'f', 'evt_x', 202, '{}', now() "
    "FROM unnest($1::text[]) AS k ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key",
}
SELECT = {
    "sqlite": "SELECT key FROM idempotency_keys WHERE key IN (?, ?, ?) ORDER BY key",
    "postgresql": "SELECT key FROM idempotency_keys WHERE key = ANY($1::text[]) ORDER BY key",
}


async def _insert(db: Database, conn: AsyncConnection, keys: list[str]) -> int:
    """How many of ``keys`` the insert added (the rows it returns)."""
    if db.is_sqlite:
        return len(await driver.fetch_all(conn, INSERT["sqlite_returning"], [json.dumps(keys)]))
    return len(await driver.fetch_all(conn, INSERT["postgresql"], [keys]))


async def _stored(db: Database, keys: list[str]) -> list[str]:
    async with db.read() as conn:
        params = keys if db.is_sqlite else [keys]
        return [r[0] for r in await driver.fetch_all(conn, SELECT[db.dialect], params)]


async def test_changes_are_counted_and_conflicts_are_not(db: Database) -> None:
    async with db.write() as conn:
        assert await _insert(db, conn, ["a", "b"]) == 2
    async with db.write() as conn:
        assert await _insert(db, conn, ["b", "c"]) == 1  # b was already there
    assert await _stored(db, ["a", "b", "c"]) == ["a", "b", "c"]


async def _insert_then_fail(db: Database) -> None:
    async with db.write() as conn:
        assert await _insert(db, conn, ["x", "y"]) == 2
        await conn.execute(text("SELECT 1"))  # SQLAlchemy and the driver share the transaction
        raise RuntimeError("after the insert")


async def test_a_failed_transaction_takes_its_raw_statements_with_it(db: Database) -> None:
    with pytest.raises(RuntimeError, match="after the insert"):
        await _insert_then_fail(db)
    assert await _stored(db, ["x", "y", "z"]) == []


async def test_raw_and_sqlalchemy_statements_see_each_other(db: Database) -> None:
    async with db.write() as conn:
        await _insert(db, conn, ["seen"])
        count = await conn.scalar(text("SELECT count(*) FROM idempotency_keys WHERE key = 'seen'"))
        assert count == 1


async def _query_missing_table(db: Database) -> None:
    async with db.write() as conn:
        await driver.fetch_all(conn, "SELECT * FROM no_such_table")


# PostgreSQL statements go through SQLAlchemy, whose errors are translated already.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_sqlite_error_from_the_driver_is_translated(db: Database) -> None:
    with pytest.raises(StoreUnavailable):
        await _query_missing_table(db)


def test_columns_are_the_unnest_arrays() -> None:
    assert driver.columns([(1, "a"), (2, "b")], 2) == [[1, 2], ["a", "b"]]
    assert driver.columns([], 3) == [[], [], []]


def _insert_sync(conn: sqlite3.Connection, keys: list[str]) -> int:
    return conn.executemany(INSERT["sqlite"], [(k,) for k in keys]).rowcount


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_write_commits_what_its_work_did(db: Database) -> None:
    assert await driver.sqlite_write(db, lambda conn: _insert_sync(conn, ["a", "b"])) == 2
    assert await _stored(db, ["a", "b", "c"]) == ["a", "b"]


def _insert_then_raise(conn: sqlite3.Connection) -> None:
    assert conn.in_transaction  # BEGIN IMMEDIATE came first
    _insert_sync(conn, ["x", "y"])
    raise RuntimeError("after the insert")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_write_rolls_back_when_its_work_raises(db: Database) -> None:
    with pytest.raises(RuntimeError, match="after the insert"):
        await driver.sqlite_write(db, _insert_then_raise)
    assert await _stored(db, ["x", "y", "z"]) == []
    # The connection went back to the pool usable, outside any transaction.
    assert await driver.sqlite_write(db, lambda conn: _insert_sync(conn, ["z"])) == 1
    async with db.write() as conn:
        assert await _insert(db, conn, ["x"]) == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_write_translates_sqlite_errors(db: Database) -> None:
    with pytest.raises(StoreUnavailable):
        await driver.sqlite_write(db, lambda conn: conn.execute("SELECT * FROM no_such_table"))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_sqlite_write_is_only_for_sqlite(db: Database) -> None:
    with pytest.raises(ValueError, match="SQLite"):
        await driver.sqlite_write(db, lambda conn: None)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_write_runs_on_the_drivers_thread(db: Database) -> None:
    """Off the event loop's thread: what the work does never blocks the loop."""
    assert await driver.sqlite_write(db, lambda _: threading.get_ident()) != threading.get_ident()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_rows_go_in_as_values_lists_of_bounded_size(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "SQLITE_ROWS_PER_STATEMENT", 3)  # 7 rows: three statements
    template = (
        "INSERT INTO idempotency_keys (key, fingerprint, event_id, response_status, "
        "response_body, created_at) SELECT column1, 'f', 'evt_x', 202, 'body', "
        "'2026-11-26 00:00:00.000000' FROM (VALUES {rows}) WHERE true "
        "ON CONFLICT (tenant_id, key) DO NOTHING"
    )
    keys = [f"k{n}" for n in range(7)]
    statements: list[str] = []

    def work(conn: sqlite3.Connection) -> int:
        conn.set_trace_callback(statements.append)
        changed = driver.sqlite_run_rows(conn, template, [(k,) for k in [*keys, "k0"]])
        conn.set_trace_callback(None)
        return changed

    assert await driver.sqlite_write(db, work) == 7  # the repeated k0 changes nothing
    assert len([s for s in statements if s.startswith("INSERT")]) == 3
    async with db.read() as conn:
        stored = await conn.scalars(text("SELECT key FROM idempotency_keys ORDER BY key"))
        assert list(stored) == keys
