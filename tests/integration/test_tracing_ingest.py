"""The trace context stored with each event at ingest, on both databases
(tracing unset: the headers are still kept and passed on)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import text

from app.domain import tracecontext
from app.store.database import Database

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


async def stored_trace(db: Database, event_id: str) -> tuple[str | None, str | None]:
    async with db.read() as conn:
        row = (
            await conn.execute(
                text("SELECT traceparent, tracestate FROM events WHERE id = :id"), {"id": event_id}
            )
        ).one()
    return row[0], row[1]


async def ingest(client: httpx.AsyncClient, headers: Any, body: Any = None) -> str:
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    pairs.append(("idempotency-key", uuid.uuid4().hex))
    response = await client.post(
        "/v1/events", json=body or {"type": "order.created"}, headers=pairs
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def test_a_valid_traceparent_and_tracestate_are_stored(
    client: httpx.AsyncClient, db: Database
) -> None:
    event_id = await ingest(client, {"traceparent": PARENT, "tracestate": "rojo=1,congo=2"})
    assert await stored_trace(db, event_id) == (PARENT, "rojo=1,congo=2")


async def test_repeated_tracestate_headers_are_one_list(
    client: httpx.AsyncClient, db: Database
) -> None:
    headers = [("traceparent", PARENT), ("tracestate", "rojo=1"), ("tracestate", "congo=2")]
    event_id = await ingest(client, headers)
    assert await stored_trace(db, event_id) == (PARENT, "rojo=1,congo=2")


async def test_an_invalid_traceparent_is_ignored_and_the_event_gets_a_new_trace(
    client: httpx.AsyncClient, db: Database
) -> None:
    invalid = [
        {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01", "tracestate": "rojo=1"},
        {"traceparent": f"ff-{TRACE}-00f067aa0ba902b7-01"},
        {"traceparent": f"00-{TRACE.upper()}-00f067aa0ba902b7-01"},
        {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01-extra"},
        {"traceparent": "nonsense", "tracestate": "rojo=1"},
        [("traceparent", PARENT), ("traceparent", PARENT)],  # two are none
    ]
    for headers in invalid:
        event_id = await ingest(client, headers)
        traceparent, tracestate = await stored_trace(db, event_id)
        stored = tracecontext.parse(traceparent)
        assert stored is not None, headers
        assert stored.trace_id not in (TRACE, "0" * 32)
        assert stored.sampled
        assert tracestate is None


async def test_an_invalid_tracestate_alone_is_dropped(
    client: httpx.AsyncClient, db: Database
) -> None:
    event_id = await ingest(client, {"traceparent": PARENT, "tracestate": "Upper=case"})
    assert await stored_trace(db, event_id) == (PARENT, None)


async def test_without_a_traceparent_each_event_starts_its_own_trace(
    client: httpx.AsyncClient, db: Database
) -> None:
    first, second = [await ingest(client, {}) for _ in range(2)]
    traces = [tracecontext.parse((await stored_trace(db, e))[0]) for e in (first, second)]
    assert all(t is not None and t.sampled for t in traces)
    assert traces[0] != traces[1]


async def test_every_event_of_a_batch_carries_the_requests_trace(
    client: httpx.AsyncClient, db: Database
) -> None:
    body = {
        "events": [{"type": "a", "idempotency_key": "k1"}, {"type": "b", "idempotency_key": "k2"}]
    }
    response = await client.post(
        "/v1/events/batch", json=body, headers={"traceparent": PARENT, "tracestate": "rojo=1"}
    )
    assert response.status_code == 200, response.text
    for item in response.json()["items"]:
        assert await stored_trace(db, item["id"]) == (PARENT, "rojo=1")


async def test_a_cloudevents_own_trace_extension_wins_over_the_request_header(
    client: httpx.AsyncClient, db: Database
) -> None:
    own = f"00-{'a' * 32}-{'b' * 16}-00"
    batch = [
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "traceparent": own,
         "tracestate": "vendor=x"},
        {"specversion": "1.0", "id": "2", "source": "/s", "type": "t"},
        {"specversion": "1.0", "id": "3", "source": "/s", "type": "t", "traceparent": "bad"},
    ]  # fmt: skip
    response = await client.post(
        "/v1/events",
        json=batch,
        headers={"content-type": "application/cloudevents-batch+json", "traceparent": PARENT},
    )
    assert response.status_code == 200, response.text
    ids = [item["id"] for item in response.json()["items"]]
    assert await stored_trace(db, ids[0]) == (own, "vendor=x")
    assert await stored_trace(db, ids[1]) == (PARENT, None)
    assert await stored_trace(db, ids[2]) == (PARENT, None)

    binary = await client.post(
        "/v1/events",
        content=b"{}",
        headers={
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "4",
            "ce-source": "/s",
            "ce-type": "t",
            "ce-traceparent": own,
            "idempotency-key": "ce-4",
        },
    )
    assert binary.status_code == 202, binary.text
    assert await stored_trace(db, binary.json()["id"]) == (own, None)
