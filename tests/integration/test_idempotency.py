"""Idempotency-Key on ``POST /v1/events``, on both databases (IETF draft -06)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import pool, update
from sqlalchemy.ext.asyncio import create_async_engine

from app.settings import Settings
from app.store import schema
from tests.integration.support import assert_problem, event_count, locs, running

ORDER = {"type": "order.created", "key": "c-1", "data": {"total": 42, "lines": [1, 2]}}


async def post(client: httpx.AsyncClient, body: Any, key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post("/v1/events", json=body, headers=headers)


async def test_replay_returns_the_stored_answer_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    first = await post(client, ORDER, "k1")
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers

    # Same meaning, other key order and whitespace: the same request.
    reordered = (
        b'{ "data": {"lines": [1, 2], "total": 42},\n "key": "c-1", "type": "order.created"}'
    )
    again = await client.post(
        "/v1/events",
        content=reordered,
        headers={"Idempotency-Key": "k1", "Content-Type": "application/json"},
    )
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert await event_count(client) == 1


async def test_same_key_different_body_is_422_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    first = await post(client, ORDER, "k1")
    assert first.status_code == 202
    for changed in (
        ORDER | {"data": {"total": 43, "lines": [1, 2]}},
        ORDER | {"key": "c-2"},
        ORDER | {"type": "order.updated"},
        ORDER | {"occurred_at": "2026-11-26T10:00:00Z"},
        {"type": "order.created", "data": {"total": 42, "lines": [1, 2]}},
    ):
        assert_problem(await post(client, changed, "k1"), 422)
    assert await event_count(client) == 1
    # The original still replays after the mismatches.
    replay = await post(client, ORDER, "k1")
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]


async def test_quoted_and_bare_forms_are_one_key(client: httpx.AsyncClient) -> None:
    bare = await post(client, ORDER, "order-42")
    quoted = await post(client, ORDER, '"order-42"')
    assert quoted.status_code == 202
    assert quoted.headers["idempotent-replayed"] == "true"
    assert quoted.json()["id"] == bare.json()["id"]

    escaped = await post(client, ORDER | {"key": "c-9"}, '"a\\"b"')
    assert escaped.status_code == 202
    assert (await post(client, ORDER | {"key": "c-9"}, 'a"b')).json()["id"] == escaped.json()["id"]
    assert await event_count(client) == 2


async def test_malformed_keys_are_400(client: httpx.AsyncClient) -> None:
    for key in ("", '""', '"unterminated', "k" * 256, '"' + "k" * 256 + '"', '"bad\\escape"'):
        response = await post(client, ORDER, key)
        assert response.status_code == 400, f"{key[:20]!r}: {response.status_code}"
        assert_problem(response, 400)
    assert (await post(client, ORDER, "k" * 255)).status_code == 202
    assert await event_count(client) == 1


async def test_missing_key_is_400_while_required(client: httpx.AsyncClient) -> None:
    assert_problem(await post(client, ORDER, None), 400)
    assert await event_count(client) == 0


async def test_key_is_optional_when_not_required(settings: Settings) -> None:
    async with running(settings, require_idempotency_key=False) as client:
        first = await post(client, ORDER, None)
        second = await post(client, ORDER, None)
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.json()["id"] != second.json()["id"]
        assert "idempotent-replayed" not in second.headers
        # A key, when sent, still deduplicates.
        keyed = [await post(client, ORDER, "k1") for _ in range(2)]
        assert keyed[1].json()["id"] == keyed[0].json()["id"]
        assert await event_count(client) == 3


async def test_concurrent_identical_requests_store_one_event(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(post(client, ORDER, "race") for _ in range(30)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 409}, statuses
    accepted = [r for r in responses if r.status_code == 202]
    assert accepted
    assert len({r.json()["id"] for r in accepted}) == 1
    assert len({r.content for r in accepted}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in accepted) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert_problem(conflict, 409)
    assert await event_count(client) == 1


async def test_concurrent_distinct_keys_store_one_event_each(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(post(client, ORDER | {"data": i}, f"key-{i}") for i in range(30))
    )
    assert [r.status_code for r in responses] == [202] * 30
    assert len({r.json()["id"] for r in responses}) == 30
    assert not any("idempotent-replayed" in r.headers for r in responses)
    assert await event_count(client) == 30


async def test_concurrent_mismatched_bodies_store_one_event(client: httpx.AsyncClient) -> None:
    bodies = [ORDER | {"data": i % 3} for i in range(30)]
    responses = await asyncio.gather(*(post(client, b, "contested") for b in bodies))
    assert {r.status_code for r in responses} <= {202, 409, 422}
    accepted = [r for r in responses if r.status_code == 202]
    assert len({r.json()["id"] for r in accepted}) == 1
    assert await event_count(client) == 1


async def _age_keys(database_url: str, by: timedelta) -> int:
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            t = schema.idempotency_keys
            result = await conn.execute(update(t).values(created_at=datetime.now(UTC) - by))
            return int(result.rowcount)
    finally:
        await engine.dispose()


async def test_key_older_than_the_ttl_is_new(settings: Settings, database_url: str) -> None:
    async with running(settings, idempotency_ttl_seconds=1) as client:
        first = await post(client, ORDER, "k1")
        assert first.status_code == 202
        assert await _age_keys(database_url, timedelta(seconds=5)) == 1

        fresh = await post(client, ORDER, "k1")
        assert fresh.status_code == 202, fresh.text
        assert "idempotent-replayed" not in fresh.headers
        assert fresh.json()["id"] != first.json()["id"]
        # The key now remembers the new event.
        replay = await post(client, ORDER, "k1")
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == fresh.json()["id"]

        # Expired, a key may even carry a different body.
        assert await _age_keys(database_url, timedelta(seconds=5)) == 1
        changed = await post(client, ORDER | {"key": "c-2"}, "k1")
        assert changed.status_code == 202, changed.text
        assert await event_count(client) == 3


async def test_key_within_the_ttl_is_remembered(settings: Settings, database_url: str) -> None:
    async with running(settings, idempotency_ttl_seconds=3600) as client:
        first = await post(client, ORDER, "k1")
        assert await _age_keys(database_url, timedelta(minutes=59)) == 1
        replay = await post(client, ORDER, "k1")
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == first.json()["id"]
        assert locs(assert_problem(await post(client, ORDER | {"key": "x"}, "k1"), 422))
        assert await event_count(client) == 1
