"""The ingest path through the app on both databases: accept, replay, mismatch."""

from __future__ import annotations

import httpx


async def test_accept_then_replay(client: httpx.AsyncClient) -> None:
    body = {"type": "order.created", "key": "c-1", "data": {"total": 42}}
    first = await client.post("/v1/events", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202, first.text
    again = await client.post("/v1/events", json=body, headers={"Idempotency-Key": '"k1"'})
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    stats = (await client.get("/v1/stats")).json()
    assert stats["events"] == 1
