"""The claim query's plan on PostgreSQL: the ``ix_deliveries_claim`` partial index
is what finds claimable deliveries, chosen by the planner on its own (no
``enable_seqscan = off``), so an index or query change cannot silently turn every
claim into a scan of the whole table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, text

from app.store.deliveries import CLAIM
from app.store.schema import UTCDateTime
from tests.integration.conftest import DeliveryKit

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

EVENTS = 5000
SUBSCRIPTIONS = 4

# Most rows are history (succeeded), a few hundred wait: the shape of a live table.
_FILL = [
    """
    INSERT INTO events (id, type, key, data, received_at)
    SELECT 'evt_' || lpad(g::text, 26, '0'), 'order.created', 'k' || (g % 200), '{}',
           now() - interval '1 hour' + g * interval '10 ms'
    FROM generate_series(1, :events) AS g
    """,
    """
    INSERT INTO deliveries (id, event_id, subscription_id, event_type, ordering_key, status,
                            ready, next_attempt_at, created_at, completed_at)
    SELECT 'dlv_' || lpad((g * 10 + s.n)::text, 26, '0'),
           'evt_' || lpad(g::text, 26, '0'),
           s.id, 'order.created', 'k' || (g % 200),
           CASE WHEN g <= :events - 200 THEN 'succeeded' ELSE 'pending' END,
           g > :events - 200 AND g <= :events - 100,
           now() - interval '1 hour' + g * interval '10 ms',
           now() - interval '1 hour' + g * interval '10 ms',
           CASE WHEN g <= :events - 200 THEN now() END
    FROM generate_series(1, :events) AS g
    CROSS JOIN (SELECT id, row_number() OVER (ORDER BY id) AS n FROM subscriptions) AS s
    """,
    "ANALYZE events",
    "ANALYZE subscriptions",
    "ANALYZE deliveries",
]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def test_claim_uses_the_claim_index(kit: DeliveryKit) -> None:
    for _ in range(SUBSCRIPTIONS):
        await kit.subscription()
    async with kit.db.write() as conn:
        for statement in _FILL:
            await conn.execute(text(statement), {"events": EVENTS})

    explain = text("EXPLAIN (FORMAT JSON) " + CLAIM["postgresql"]).bindparams(
        bindparam("now", type_=UTCDateTime()),
        bindparam("lease", type_=UTCDateTime()),
        bindparam("exclude", expanding=True),
    )
    now = datetime.now(UTC)
    async with kit.db.read() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM deliveries"))).scalar()
        assert count == EVENTS * SUBSCRIPTIONS
        result = await conn.execute(
            explain,
            {
                "owner": "worker-a",
                "now": now,
                "lease": now + timedelta(minutes=1),
                "limit": 128,
                "exclude": ["-"],
            },
        )
        document = result.scalar()
    plan = (document if isinstance(document, list) else json.loads(document))[0]
    nodes = list(_nodes(plan["Plan"]))
    described = "\n".join(
        f"{n['Node Type']} {n.get('Relation Name', '')} {n.get('Alias', '')} "
        f"{n.get('Index Name', '')}"
        for n in nodes
    )

    claim_index = [n for n in nodes if n.get("Index Name") == "ix_deliveries_claim"]
    assert claim_index, f"ix_deliveries_claim is not used:\n{described}"
    seq_scans = [
        n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "deliveries"
    ]
    assert not seq_scans, f"the claim scans the deliveries table:\n{described}"
