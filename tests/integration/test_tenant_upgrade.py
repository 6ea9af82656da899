"""A database made by the release before tenants upgrades without loss, on both
databases: every row is kept as it was and belongs to ``default``, and every
answer is the one the earlier release gave (API-v2: backward compatibility).

The earlier release's schema is made by its own migrations (up to ``0002``);
its rows are written with the columns that schema has.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from alembic import command
from sqlalchemy import Table, column, select, table

from app.domain.idempotency import fingerprint
from app.domain.tokens import hash_token
from app.main import create_app
from app.settings import Settings
from app.store import schema
from app.store.database import Database, open_database
from app.store.migrations import alembic_config, upgrade_head
from tests.integration.support import client_for

PREVIOUS_RELEASE = "0002"
ADMIN = "er_previous_release_admin"
INGEST = "er_previous_release_ingest"
REVOKED = "er_previous_release_revoked"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _event_meaning(data: Any) -> dict[str, Any]:
    return {
        "type": "order.created",
        "key": "cust-1",
        "data": data,
        "schema_version": None,
        "occurred_at": None,
    }


ROWS: dict[str, list[dict[str, Any]]] = {
    "tokens": [
        {"id": "tok_admin", "token_hash": hash_token(ADMIN), "scope": "admin", "created_at": T0},
        {"id": "tok_ingest", "token_hash": hash_token(INGEST), "scope": "ingest", "created_at": T0},
        {
            "id": "tok_revoked",
            "token_hash": hash_token(REVOKED),
            "scope": "admin",
            "created_at": T0,
            "revoked_at": T0,
        },
    ],
    "subscriptions": [
        {
            "id": "sub_old",
            "url": "http://127.0.0.1:9/hook",
            "description": "from before",
            "event_types": '["order.*"]',
            "secret": "whsec_" + "A" * 43 + "=",
            "headers": '{"X-Team": "billing"}',
            "ordering": "key",
            "on_dead_letter": "skip",
            "max_in_flight": 32,
            "status": "active",
            "created_at": T0,
            "updated_at": T0,
        }
    ],
    "events": [
        {
            "id": f"evt_old{n}",
            "type": "order.created",
            "key": "cust-1",
            "data": orjson.dumps({"n": n}).decode(),
            "received_at": T0 + timedelta(seconds=n),
        }
        for n in range(3)
    ],
    "deliveries": [
        {
            "id": f"dlv_old{n}",
            "event_id": f"evt_old{n}",
            "subscription_id": "sub_old",
            "event_type": "order.created",
            "ordering_key": "cust-1",
            "status": status,
            "ready": status == "pending",
            "attempts": attempts,
            "next_attempt_at": T0 + timedelta(days=365),
            "created_at": T0,
            "completed_at": T0 if status == "succeeded" else None,
            "dead_lettered_at": T0 if status == "dead" else None,
            "last_status_code": 500 if status == "dead" else None,
        }
        for n, (status, attempts) in enumerate([("succeeded", 1), ("dead", 2), ("pending", 0)])
    ],
    "attempts": [
        {
            "delivery_id": "dlv_old1",
            "attempt": n,
            "started_at": T0,
            "duration_ms": 5,
            "status_code": 500,
            "response_body": "no",
        }
        for n in (1, 2)
    ],
    "idempotency_keys": [
        {
            "key": "old-key",
            "fingerprint": fingerprint(_event_meaning({"n": 0})),
            "event_id": "evt_old0",
            "response_status": 202,
            "response_body": '{"id":"evt_old0","stored":"as answered then"}',
            # Recent, so the key is live whenever the test runs.
            "created_at": datetime.now(UTC),
        }
    ],
    "event_types": [
        {"name": "order.created", "compatibility": "BACKWARD", "created_at": T0},
    ],
    "event_schemas": [
        {
            "event_type": "order.created",
            "version": 1,
            "schema": '{"type":"object"}',
            "created_at": T0,
        }
    ],
}


def _table(name: str) -> Table:
    table: Table = getattr(schema, name)
    return table


async def _write_previous_release(db: Database) -> None:
    async with db.write() as conn:
        for name, rows in ROWS.items():
            # Only the columns the earlier release had: the rows name no tenant.
            full = _table(name)
            for row in rows:
                columns = [column(k, full.c[k].type) for k in row]
                await conn.execute(table(name, *columns).insert().values(**row))


async def _read_all(db: Database, name: str) -> list[dict[str, Any]]:
    table = _table(name)
    async with db.read() as conn:
        rows = await conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(r._mapping) for r in rows]


async def test_a_previous_release_database_upgrades_without_loss(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    await asyncio.to_thread(command.upgrade, alembic_config(url), PREVIOUS_RELEASE)
    db = open_database(url)
    try:
        await _write_previous_release(db)
    finally:
        await db.dispose()

    await asyncio.to_thread(upgrade_head, url)

    db = open_database(url)
    try:
        for name, written in ROWS.items():
            stored = await _read_all(db, name)
            assert len(stored) == len(written), name
            by_key = {tuple(r[c.name] for c in _table(name).primary_key.columns): r for r in stored}
            for row in stored:
                if "tenant_id" in row:
                    expected = None if name == "tokens" else "default"
                    assert row["tenant_id"] == expected, (name, row)
            for original in written:
                match = [r for r in by_key.values() if all(r[k] == v for k, v in original.items())]
                assert len(match) == 1, (name, original)
        tenants = await _read_all(db, "tenants")
        assert [(t["id"], t["status"]) for t in tenants] == [("default", "active")]
    finally:
        await db.dispose()

    await _answers_as_before(url)


async def _answers_as_before(url: str) -> None:
    application = create_app(Settings(database_url=url, log_format="text"))
    async with application.router.lifespan_context(application):
        admin = client_for(application, ADMIN)
        ingest = client_for(application, INGEST)
        stats = (await admin.get("/v1/stats")).json()
        assert stats == {
            "events": 3,
            "subscriptions": 1,
            "deliveries": {
                "pending": 1,
                "in_flight": 0,
                "succeeded": 1,
                "dead": 1,
                "discarded": 0,
            },
        }
        listed = (await admin.get("/v1/events", params={"order": "asc"})).json()
        assert [e["id"] for e in listed["items"]] == ["evt_old0", "evt_old1", "evt_old2"]
        detail = (await admin.get("/v1/events/evt_old1")).json()
        assert [(d["id"], d["status"], d["attempts"]) for d in detail["deliveries"]] == [
            ("dlv_old1", "dead", 2)
        ]
        attempts = (await admin.get("/v1/events/evt_old1/attempts")).json()["items"]
        assert [a["attempt"] for a in attempts] == [1, 2]
        dlq = (await admin.get("/v1/dlq")).json()["items"]
        assert [d["id"] for d in dlq] == ["dlv_old1"]
        sub = (await admin.get("/v1/subscriptions/sub_old")).json()
        assert (sub["description"], sub["headers"]) == ("from before", {"X-Team": "billing"})
        schema_v1 = (await admin.get("/v1/event-types/order.created/schemas/latest")).json()
        assert schema_v1 == {"version": 1, "schema": {"type": "object"}}
        # The stored key answers as it did, and a new event reaches the old subscription.
        replay = await ingest.post(
            "/v1/events",
            json={"type": "order.created", "key": "cust-1", "data": {"n": 0}},
            headers={"Idempotency-Key": "old-key"},
        )
        assert replay.status_code == 202
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.text == ROWS["idempotency_keys"][0]["response_body"]
        new = await ingest.post(
            "/v1/events",
            json={"type": "order.created", "data": {}},
            headers={"Idempotency-Key": "new-key"},
        )
        assert new.status_code == 202
        assert new.json()["deliveries"] == 1
        revoked = client_for(application, REVOKED)
        assert (await revoked.get("/v1/stats")).status_code == 401
        for c in (admin, ingest, revoked):
            await c.aclose()
