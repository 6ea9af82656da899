"""PostgreSQL: with 100,000 dead letters the DLQ list query is served by the
``ix_deliveries_dead*`` partial indexes for every filter (no Seq Scan on deliveries).

The statement explained is the one ``app.store.dlq.list_dead`` really sends: it is
captured from the engine while ``list_dead`` runs, then run again under EXPLAIN
with the same parameters. If the code stops spelling the index predicate, the
plan changes and this test fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from app.store import dlq
from app.store.database import Database
from tests.integration.conftest import DeliveryKit

DEAD_LETTERS = 100_000
OTHERS = 3_000
SUBSCRIPTIONS = 10
TYPES = 40


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


async def fill(kit: DeliveryKit) -> list[str]:
    subs = [(await kit.subscription()).id for _ in range(SUBSCRIPTIONS)]
    total = DEAD_LETTERS + OTHERS
    async with kit.db.write() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO events (id, type, key, data, received_at)
                SELECT 'evt_' || lpad(i::text, 26, '0'), 'type.' || (i % :types),
                       'key-' || (i % 997), '{}', now() - interval '1 day' + i * interval '1 ms'
                FROM generate_series(1, :total) AS i
                """
            ),
            {"types": TYPES, "total": total},
        )
        await conn.execute(
            text(
                """
                INSERT INTO deliveries (id, event_id, subscription_id, event_type, ordering_key,
                    status, ready, attempts, round_attempts, next_attempt_at, created_at,
                    completed_at, dead_lettered_at, last_status_code, last_error)
                SELECT 'dlv_' || lpad(i::text, 26, '0'), 'evt_' || lpad(i::text, 26, '0'),
                       (CAST(:subs AS text[]))[1 + i % :nsubs], 'type.' || (i % :types), NULL,
                       CASE WHEN i <= :dead THEN 'dead'
                            WHEN i % 3 = 0 THEN 'pending' ELSE 'succeeded' END,
                       TRUE, 4, 4, now(), now(),
                       CASE WHEN i > :dead AND i % 3 <> 0 THEN now() END,
                       CASE WHEN i <= :dead THEN now() END, 500, 'HTTP 500'
                FROM generate_series(1, :total) AS i
                """
            ),
            {
                "subs": subs,
                "nsubs": SUBSCRIPTIONS,
                "types": TYPES,
                "dead": DEAD_LETTERS,
                "total": total,
            },
        )
        await conn.execute(text("ANALYZE events"))
        await conn.execute(text("ANALYZE deliveries"))
    return subs


async def explain_list_dead(db: Database, **filters: Any) -> tuple[list[Any], dict[str, Any]]:
    """Run ``list_dead`` and EXPLAIN the exact statement it sent."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM deliveries" in statement and "dead" in statement:
            captured.append((statement, parameters))

    engine = db.reader.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        page, _ = await dlq.list_dead(
            db,
            "default",
            subscription_id=filters.get("subscription_id"),
            event_type=filters.get("event_type"),
            after_seq=filters.get("after_seq"),
            limit=50,
        )
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(captured) == 1, captured
    statement, parameters = captured[0]
    async with db.read() as conn:
        result = await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
        raw = result.scalar()
    document: Any = json.loads(raw) if isinstance(raw, str) else raw
    assert document is not None
    return page, document[0]["Plan"]


# EXPLAIN plans are PostgreSQL's (SQLite has its own planner).
@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
async def test_dlq_list_uses_the_dead_letter_indexes_for_every_filter(
    backend: str, kit: DeliveryKit, db: Database
) -> None:
    subs = await fill(kit)

    cases: dict[str, dict[str, Any]] = {
        "no filter": {},
        "subscription_id": {"subscription_id": subs[3]},
        "event_type": {"event_type": "type.7"},
        "both": {"subscription_id": subs[3], "event_type": "type.13"},
        "cursor": {"subscription_id": subs[5], "after_seq": DEAD_LETTERS // 2},
    }
    for name, filters in cases.items():
        page, plan = await explain_list_dead(db, **filters)
        assert page, f"{name}: the page is empty"
        nodes = list(plan_nodes(plan))
        scans = [
            (n["Node Type"], n.get("Index Name"))
            for n in nodes
            if n.get("Relation Name") == "deliveries"
        ]
        assert scans, f"{name}: deliveries not in the plan {plan}"
        assert all(node != "Seq Scan" for node, _ in scans), f"{name}: {scans}"
        assert all(str(index).startswith("ix_deliveries_dead") for _, index in scans), (
            f"{name}: {scans}"
        )
        assert plan.get("Node Type") != "Sort" or plan["Plan Rows"] <= 51, (name, plan)
        # The page is what the filter asks for.
        assert all(
            item.subscription_id == filters.get("subscription_id", item.subscription_id)
            and item.event_type == filters.get("event_type", item.event_type)
            for item in page
        ), name
