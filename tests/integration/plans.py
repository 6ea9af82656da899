"""Query plans as the product runs its statements: capture every statement a code
path sends, then ask the database how it would run each one.

PostgreSQL runs them as prepared statements (asyncpg), so a plan is asked for
the way PostgreSQL would make it: ``PREPARE`` the captured SQL and ``EXPLAIN
EXECUTE`` it with the captured parameters, in the plan-cache mode the test
chooses (``force_generic_plan`` shows the plan made without the parameters'
values). SQLite takes ``EXPLAIN QUERY PLAN`` with the parameters bound.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from app.store.database import Database

# The tables that grow with traffic; a hot statement never scans one of them.
GROWING = frozenset({"events", "deliveries", "attempts", "idempotency_keys"})
_PLANNABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")

Statement = tuple[str, Any]


@contextmanager
def captured_statements() -> Iterator[list[Statement]]:
    """Every statement any engine sends while the block runs, with its parameters."""
    seen: list[Statement] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith(_PLANNABLE):
            seen.append((statement, parameters[0] if many else parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def distinct(statements: Sequence[Statement]) -> list[Statement]:
    """One example of each statement text (the first one sent)."""
    first: dict[str, Statement] = {}
    for sql, params in statements:
        first.setdefault(sql, (sql, params))
    return list(first.values())


# -- PostgreSQL ----------------------------------------------------------------


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def postgres_plan(db: Database, sql: str, params: Any, mode: str) -> list[dict[str, Any]]:
    """The nodes of the plan PostgreSQL makes for prepared ``sql`` in ``mode``."""
    values = list(params.values()) if isinstance(params, dict) else list(params or ())
    async with db.read() as conn:
        await conn.execute(text(f"SET LOCAL plan_cache_mode = {mode}"))
        await conn.exec_driver_sql(f"PREPARE plan_check AS {sql}")
        arguments = ", ".join(literal(v) for v in values)
        call = f"plan_check({arguments})" if values else "plan_check"
        document = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE {call}")).scalar()
        await conn.exec_driver_sql("DEALLOCATE plan_check")
    plan = (document if isinstance(document, list) else json.loads(document))[0]
    return list(plan_nodes(plan["Plan"]))


def literal(value: object) -> str:
    """A constant for EXECUTE, which takes no bind parameters."""
    if value is None or (isinstance(value, list) and all(v is None for v in value)):
        return "NULL"
    if isinstance(value, list | tuple):
        if not value:
            return "'{}'"
        return "ARRAY[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def describe(nodes: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{n['Node Type']} {n.get('Relation Name', '')} {n.get('Alias', '')} "
        f"{n.get('Index Name', '')}"
        for n in nodes
    )


def postgres_scans(nodes: list[dict[str, Any]]) -> list[str]:
    """The growing tables a plan reads whole."""
    return [
        n["Relation Name"]
        for n in nodes
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in GROWING
    ]


# -- SQLite --------------------------------------------------------------------


def sqlite_plan(conn: sqlite3.Connection, sql: str, params: Any) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params or ())]


def sqlite_scans(sql: str, steps: list[str]) -> list[str]:
    """The steps that read a growing table whole: ``SCAN t`` without an index
    (``SCAN t USING … INDEX`` walks an index in order, what a page wants). A
    statement with no condition at all is a page of the whole table in ``seq``
    order: its walk stops at the page's end."""
    if " WHERE " not in f" {' '.join(sql.split())} " and "LIMIT" in sql:
        return []
    return [
        step
        for step in steps
        if step.startswith("SCAN ") and step.split()[1] in GROWING and "USING" not in step
    ]
