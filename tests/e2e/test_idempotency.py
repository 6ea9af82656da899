"""The Idempotency-Key table of the API contract, against the real server.

Each test uses its own event type and keys, so the module can share one
server per backend; counts are taken per type and as before/after deltas.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    ServerFactory,
    ServerProcess,
    assert_problem,
    event_count,
)

CONCURRENT_REQUESTS = 30
TTL_DEADLINE_SECONDS = 10.0


@pytest.fixture
def api(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with shared_server.client() as client:
        yield client


def unique_type() -> str:
    return f"idem.{uuid.uuid4().hex[:12]}"


def post(client: httpx.Client, body: Any, key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/events", json=body, headers=headers)


def events_of_type(client: httpx.Client, event_type: str) -> list[dict[str, Any]]:
    response = client.get("/v1/events", params={"type": event_type, "limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("missing", None),
        ("empty", ""),
        ("empty quoted", '""'),
        ("256 characters", "k" * 256),
        ("256 characters quoted", '"' + "k" * 256 + '"'),
    ],
)
def test_unusable_key_is_400_and_stores_nothing(
    api: httpx.Client, case: str, key: str | None
) -> None:
    before = event_count(api)
    response = post(api, {"type": unique_type(), "data": {"case": case}}, key)
    assert_problem(response, 400)
    assert event_count(api) == before


def test_255_character_key_is_accepted(api: httpx.Client) -> None:
    key = uuid.uuid4().hex.ljust(255, "k")
    response = post(api, {"type": unique_type()}, key)
    assert response.status_code == 202, response.text


def test_same_key_same_body_replays_the_stored_answer(api: httpx.Client) -> None:
    event_type = unique_type()
    body = {"type": event_type, "key": "customer-42", "data": {"total": 42}}
    key = f"replay-{uuid.uuid4()}"
    before = event_count(api)

    first = post(api, body, key)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    assert first.json()["id"].startswith("evt_")
    assert event_count(api) == before + 1

    for _ in range(2):
        again = post(api, body, key)
        assert again.status_code == first.status_code
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert again.content == first.content
    assert event_count(api) == before + 1
    assert [e["id"] for e in events_of_type(api, event_type)] == [first.json()["id"]]


def test_same_key_different_body_is_422(api: httpx.Client) -> None:
    event_type = unique_type()
    key = f"mismatch-{uuid.uuid4()}"
    first = post(api, {"type": event_type, "data": {"total": 42}}, key)
    assert first.status_code == 202, first.text
    before = event_count(api)

    for other in (
        {"type": event_type, "data": {"total": 43}},
        {"type": event_type, "data": {"total": 42}, "key": "k"},
        {"type": event_type + ".other", "data": {"total": 42}},
    ):
        assert_problem(post(api, other, key), 422)
    assert event_count(api) == before
    # The stored answer is untouched by the rejected attempts.
    again = post(api, {"type": event_type, "data": {"total": 42}}, key)
    assert again.status_code == 202
    assert again.json() == first.json()


@pytest.mark.parametrize(("first_form", "second_form"), [('"{}"', "{}"), ("{}", '"{}"')])
def test_quoted_and_bare_forms_are_the_same_key(
    api: httpx.Client, first_form: str, second_form: str
) -> None:
    key = f"form-{uuid.uuid4().hex}"
    body = {"type": unique_type(), "data": [1, 2, 3]}
    first = post(api, body, first_form.format(key))
    assert first.status_code == 202, first.text
    second = post(api, body, second_form.format(key))
    assert second.status_code == 202, second.text
    assert second.headers.get("idempotent-replayed") == "true"
    assert second.json()["id"] == first.json()["id"]
    # ...and a different body under the other form is the same key's mismatch.
    assert_problem(post(api, {"type": body["type"], "data": []}, second_form.format(key)), 422)


async def test_concurrent_requests_with_one_key_make_one_event(
    shared_server: ServerProcess,
) -> None:
    event_type = unique_type()
    body = {"type": event_type, "key": "k", "data": {"n": 1}}
    key = f"race-{uuid.uuid4()}"
    async with shared_server.async_client(
        limits=httpx.Limits(max_connections=CONCURRENT_REQUESTS)
    ) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v1/events", json=body, headers={"Idempotency-Key": key})
                for _ in range(CONCURRENT_REQUESTS)
            )
        )
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {202, 409}, statuses
        accepted = [a for a in answers if a.status_code == 202]
        assert accepted, statuses
        assert len({a.json()["id"] for a in accepted}) == 1, [a.text for a in accepted]
        # The request that created the event is answered as a first use; the rest replay.
        assert sum(a.headers.get("idempotent-replayed") != "true" for a in accepted) == 1
        for conflict in (a for a in answers if a.status_code == 409):
            assert_problem(conflict, 409)

        listed = await client.get("/v1/events", params={"type": event_type})
        assert [e["id"] for e in listed.json()["items"]] == [accepted[0].json()["id"]]
        replay = await client.post("/v1/events", json=body, headers={"Idempotency-Key": key})
        assert replay.status_code == 202
        assert replay.json() == accepted[0].json()


def test_key_older_than_the_ttl_is_treated_as_new(
    server_factory: ServerFactory, database_url: str
) -> None:
    server = server_factory(database_url, env={"EVENTRELAY_IDEMPOTENCY_TTL_SECONDS": "1"})
    event_type = unique_type()
    key = f"ttl-{uuid.uuid4()}"
    with server.client() as api:
        first = post(api, {"type": event_type, "data": 1}, key)
        assert first.status_code == 202, first.text
        first_id = first.json()["id"]

        deadline = time.monotonic() + TTL_DEADLINE_SECONDS
        while True:
            again = post(api, {"type": event_type, "data": 1}, key)
            assert again.status_code == 202, again.text
            if again.headers.get("idempotent-replayed") != "true":
                break
            assert again.json()["id"] == first_id
            assert time.monotonic() < deadline, "the key was still remembered past its TTL"
            time.sleep(0.1)
        assert again.json()["id"] != first_id
        # Both events exist, and the key now names the new one.
        assert sorted(e["id"] for e in events_of_type(api, event_type)) == sorted(
            [first_id, again.json()["id"]]
        )
        replay = post(api, {"type": event_type, "data": 1}, key)
        assert replay.status_code == 202
        if replay.headers.get("idempotent-replayed") == "true":
            assert replay.json()["id"] == again.json()["id"]
