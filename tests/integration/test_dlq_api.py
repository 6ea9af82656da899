"""The dead-letter queue over the API on both databases: browse, inspect, redrive,
discard, and the attempt history of an event.

API.md, Dead-letter queue. Dead letters are made with the store kit, the way the
worker makes them (claim, then complete as ``dead``); the API is driven through
the in-process ``client`` on the same database.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.domain.events import NewEvent
from app.store.subscriptions import Subscription
from app.store.work import Claimed
from tests.integration.conftest import DeliveryKit
from tests.integration.support import assert_problem

DEAD_LETTER_FIELDS = {
    "id",
    "event_id",
    "subscription_id",
    "event_type",
    "key",
    "attempts",
    "last_status_code",
    "last_error",
    "dead_lettered_at",
}
ATTEMPT_FIELDS = {
    "attempt",
    "started_at",
    "duration_ms",
    "status_code",
    "error",
    "response_body",
    "request_headers",
}


async def kill_all(kit: DeliveryKit, *, failures_first: int = 0) -> list[Claimed]:
    """Claim every claimable delivery; fail each ``failures_first`` times (retry at
    once), then dead-letter it. Returns the dead-lettered claims."""
    for _ in range(failures_first):
        for c in await kit.claim():
            await kit.finish(c, "pending", status_code=503, next_attempt_at=datetime.now(UTC))
    claimed = await kit.claim()
    for c in claimed:
        await kit.finish(c, "dead", status_code=500)
    return claimed


async def dlq_ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get("/v1/dlq", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    return [item["id"] for item in body["items"]]


async def delivery_of(kit: DeliveryKit, event: NewEvent, sub: Subscription) -> str:
    return str((await kit.delivery_for(event, sub))["id"])


# -- listing -----------------------------------------------------------------------


async def test_list_shows_every_dead_letter_with_its_fields(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    sub = await kit.subscription()
    events = await kit.events(("order.created", "k1"), ("order.paid", None))
    await kill_all(kit, failures_first=1)

    response = await client.get("/v1/dlq")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    items = body["items"]
    assert [i["event_id"] for i in items] == [e.id for e in events], "oldest first"
    for item, event in zip(items, events, strict=True):
        assert set(item) == DEAD_LETTER_FIELDS
        assert item["id"] == await delivery_of(kit, event, sub)
        assert item["id"].startswith("dlv_")
        assert item["subscription_id"] == sub.id
        assert item["event_type"] == event.type
        assert item["key"] == event.key
        assert item["attempts"] == 2
        assert item["last_status_code"] == 500
        assert item["dead_lettered_at"] is not None
        datetime.fromisoformat(item["dead_lettered_at"].replace("Z", "+00:00"))


async def test_list_leaves_out_deliveries_that_are_not_dead(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    await kit.subscription(ordering="none")
    dead, succeeded, in_flight, pending = await kit.events(
        ("t", None), ("t", None), ("t", None), ("t", None)
    )
    claimed = {c.event_id: c for c in await kit.claim(limit=3)}
    await kit.finish(claimed[dead.id], "dead")
    await kit.finish(claimed[succeeded.id], "succeeded")
    assert in_flight.id in claimed
    assert pending.id not in claimed

    listed = (await client.get("/v1/dlq")).json()["items"]
    assert [i["event_id"] for i in listed] == [dead.id]


async def test_filters_by_subscription_and_event_type(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    a = await kit.subscription()
    b = await kit.subscription()
    x1, y1, x2 = await kit.events(("type.x", None), ("type.y", None), ("type.x", "k"))
    await kill_all(kit)

    expected = {(e.id, s.id): await delivery_of(kit, e, s) for e in (x1, y1, x2) for s in (a, b)}
    by_seq = await dlq_ids(client)
    assert sorted(by_seq) == sorted(expected.values())

    def in_order(wanted: set[str]) -> list[str]:
        return [i for i in by_seq if i in wanted]

    assert await dlq_ids(client, subscription_id=a.id) == in_order(
        {v for (_, s), v in expected.items() if s == a.id}
    )
    assert await dlq_ids(client, event_type="type.x") == in_order(
        {v for (e, _), v in expected.items() if e in (x1.id, x2.id)}
    )
    assert await dlq_ids(client, subscription_id=b.id, event_type="type.y") == [
        expected[(y1.id, b.id)]
    ]
    assert await dlq_ids(client, subscription_id="sub_unknown") == []
    assert await dlq_ids(client, event_type="type.none") == []


async def test_cursor_pagination_walks_every_dead_letter_once(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    await kit.subscription(ordering="none")
    events = await kit.events(*[("page.t", None) for _ in range(7)])
    await kill_all(kit)

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/dlq", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= 2
        seen += [i["event_id"] for i in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "pagination does not end"
    assert seen == [e.id for e in events]
    assert pages == 4

    # A filter and a cursor together.
    first = (await client.get("/v1/dlq", params={"limit": 3, "event_type": "page.t"})).json()
    rest = (
        await client.get(
            "/v1/dlq", params={"limit": 10, "event_type": "page.t", "cursor": first["next_cursor"]}
        )
    ).json()
    assert [i["event_id"] for i in first["items"] + rest["items"]] == seen
    assert rest["next_cursor"] is None


@pytest.mark.parametrize("limit", ["0", "-1", "501", "abc"])
async def test_limit_out_of_bounds_is_422(client: httpx.AsyncClient, limit: str) -> None:
    assert_problem(await client.get("/v1/dlq", params={"limit": limit}), 422)


async def test_limit_bounds_are_accepted(client: httpx.AsyncClient) -> None:
    for limit in (1, 500):
        response = await client.get("/v1/dlq", params={"limit": limit})
        assert response.status_code == 200, response.text


async def test_dlq_needs_an_admin_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/dlq", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


# -- one dead letter ---------------------------------------------------------------


async def test_show_has_the_whole_event_and_every_attempt(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    sub = await kit.subscription()
    (event,) = await kit.events(("order.created", "cust-1"))
    await kill_all(kit, failures_first=2)
    dlv = await delivery_of(kit, event, sub)

    response = await client.get(f"/v1/dlq/{dlv}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= DEAD_LETTER_FIELDS
    # "the item plus event and attempts": the attempt list takes the count's name.
    assert body["id"] == dlv
    assert body["key"] == "cust-1"
    whole = body["event"]
    assert whole["id"] == event.id
    assert whole["type"] == "order.created"
    assert whole["key"] == "cust-1"
    assert whole["data"] == {}
    assert "received_at" in whole
    assert [a["attempt"] for a in body["attempts"]] == [1, 2, 3]
    for a in body["attempts"]:
        assert set(a) == ATTEMPT_FIELDS
        assert isinstance(a["duration_ms"], int)
        datetime.fromisoformat(a["started_at"].replace("Z", "+00:00"))
        assert a["response_body"] is None or len(a["response_body"]) <= 4096
    assert [a["status_code"] for a in body["attempts"]] == [503, 503, 500]


async def test_unknown_or_not_dead_ids_are_404(client: httpx.AsyncClient, kit: DeliveryKit) -> None:
    sub = await kit.subscription(ordering="none")
    pending, succeeded = await kit.events(("t", None), ("t", None))
    for c in await kit.claim():
        if c.event_id == succeeded.id:
            await kit.finish(c, "succeeded")
    in_flight = await delivery_of(kit, pending, sub)
    done = await delivery_of(kit, succeeded, sub)
    for dlv in ("dlv_doesnotexist", in_flight, done):
        assert_problem(await client.get(f"/v1/dlq/{dlv}"), 404)
        assert_problem(await client.post(f"/v1/dlq/{dlv}/redrive"), 404)
        assert_problem(await client.delete(f"/v1/dlq/{dlv}"), 404)
    assert (await kit.delivery(in_flight))["status"] == "in_flight"
    assert (await kit.delivery(done))["status"] == "succeeded"


# -- redrive -----------------------------------------------------------------------


async def test_redrive_one_gives_a_fresh_schedule_and_keeps_the_history(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    sub = await kit.subscription()
    (event,) = await kit.events(("t", "k"))
    await kill_all(kit, failures_first=2)
    dlv = await delivery_of(kit, event, sub)
    before = await kit.delivery(dlv)
    assert before["status"] == "dead"
    assert before["attempts"] == 3
    assert before["round_attempts"] == 3

    started = datetime.now(UTC)
    response = await client.post(f"/v1/dlq/{dlv}/redrive")
    assert response.status_code == 202, response.text

    after = await kit.delivery(dlv)
    assert after["status"] == "pending"
    assert after["round_attempts"] == 0
    assert after["attempts"] == 3, "the attempt count is kept"
    assert after["dead_lettered_at"] is None
    assert after["ready"] is True
    assert started - timedelta(seconds=5) <= after["next_attempt_at"] <= datetime.now(UTC)
    assert len(await kit.attempts_of(dlv)) == 3, "the history is kept"
    assert_problem(await client.get(f"/v1/dlq/{dlv}"), 404)

    (claimed,) = await kit.claim()
    assert claimed.id == dlv
    assert (claimed.attempts, claimed.round_attempts) == (3, 0)
    await kit.finish(claimed, "succeeded")
    attempts = await kit.attempts_of(dlv)
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]

    # Redriving twice: the second finds no dead letter.
    assert_problem(await client.post(f"/v1/dlq/{dlv}/redrive"), 404)


async def test_redrive_twice_in_a_row_is_404_the_second_time(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    sub = await kit.subscription()
    (event,) = await kit.events(("t", None))
    await kill_all(kit)
    dlv = await delivery_of(kit, event, sub)
    assert (await client.post(f"/v1/dlq/{dlv}/redrive")).status_code == 202
    assert_problem(await client.post(f"/v1/dlq/{dlv}/redrive"), 404)
    assert (await kit.delivery(dlv))["status"] == "pending"
    assert len(await kit.claim()) == 1


async def test_bulk_redrive_by_filter_counts_and_is_safe_to_repeat(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    a = await kit.subscription(ordering="none")
    b = await kit.subscription(ordering="none")
    await kit.events(("x", None), ("x", None), ("y", None))
    await kill_all(kit)  # 6 dead letters: 3 events x 2 subscriptions

    async def bulk(**body: Any) -> int:
        response = await client.post("/v1/dlq/redrive", json=body)
        assert response.status_code == 200, response.text
        return int(response.json()["redriven"])

    assert await bulk(subscription_id=a.id, event_type="x") == 2
    assert await bulk(subscription_id=a.id, event_type="x") == 0
    assert await bulk(event_type="y") == 2
    assert await bulk(event_type="y") == 0
    assert await dlq_ids(client, subscription_id=a.id) == []
    assert len(await dlq_ids(client, subscription_id=b.id)) == 2
    assert await bulk() == 2
    assert await bulk() == 0
    assert await dlq_ids(client) == []

    claimed = await kit.claim()
    assert len(claimed) == 6
    assert all(c.round_attempts == 0 and c.attempts == 1 for c in claimed)


async def test_bulk_redrive_rejects_unknown_fields(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/v1/dlq/redrive", json={"subscription": "x"}), 422)


async def test_bulk_redrive_of_a_blocked_key_frees_only_its_head(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    await kit.subscription(on_dead_letter="block")
    first, second = await kit.events(("t", "k"), ("t", "k"))
    await kill_all(kit)
    assert await kit.claim() == [], "the key is blocked by its dead letter"
    assert (await client.post("/v1/dlq/redrive", json={})).json() == {"redriven": 1}
    (head,) = await kit.claim()
    assert head.event_id == first.id
    assert await kit.claim() == []
    await kit.finish(head, "succeeded")
    (nxt,) = await kit.claim()
    assert nxt.event_id == second.id


# SQLite has a single writer; concurrent claims are PostgreSQL's question.
@pytest.mark.parametrize("backend", ["postgres"])
async def test_bulk_redrive_concurrent_with_claims_never_double_claims(
    backend: str, client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    await kit.subscription(ordering="none")
    await kit.subscription()  # ordering by key: lines take part too
    count = 60
    await kit.events(*[("bulk.t", f"k{i % 7}" if i % 2 else None) for i in range(count)])
    # Kill every delivery (the keyed subscription frees a key's next one after each death).
    dead: list[Claimed] = []
    while batch := await kill_all(kit):
        dead += batch
    assert len(dead) == 2 * count
    dead_ids = {c.id for c in dead}

    claims: list[Claimed] = []
    owners = [f"worker-{n}" for n in range(4)] + ["worker-last"]
    owned: dict[str, list[Claimed]] = {o: [] for o in owners}
    stop = asyncio.Event()

    async def claimer(owner: str) -> None:
        while not stop.is_set():
            got = await kit.claim(owner, limit=7)
            owned[owner] += got
            claims.extend(got)
            await asyncio.sleep(0)

    async def redrive() -> int:
        try:
            response = await client.post("/v1/dlq/redrive", json={})
            assert response.status_code == 200, response.text
            return int(response.json()["redriven"])
        finally:
            await asyncio.sleep(0.2)
            stop.set()

    results = await asyncio.wait_for(
        asyncio.gather(redrive(), *(claimer(o) for o in owners[:4])), 60
    )
    assert results[0] == 2 * count
    # Finish what was claimed so each key's line moves on; claim the rest.
    pending = list(claims)
    while pending:
        for c in pending:
            await kit.finish(c, "succeeded", owner=next(o for o in owners if c in owned[o]))
        pending = await kit.claim("worker-last", limit=1000)
        owned["worker-last"] = pending
        claims.extend(pending)

    ids = [c.id for c in claims]
    assert len(ids) == len(set(ids)), "a delivery was claimed twice"
    assert set(ids) <= dead_ids
    assert set(ids) == dead_ids, "every redriven delivery became claimable"


# -- discard -----------------------------------------------------------------------


async def test_discard_removes_from_the_dlq_and_keeps_it_on_the_event(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    sub = await kit.subscription()
    (event,) = await kit.events(("t", None))
    await kill_all(kit)
    dlv = await delivery_of(kit, event, sub)

    response = await client.delete(f"/v1/dlq/{dlv}")
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(f"/v1/dlq/{dlv}"), 404)
    assert await dlq_ids(client) == []
    shown = (await client.get(f"/v1/events/{event.id}")).json()
    assert [(d["id"], d["status"]) for d in shown["deliveries"]] == [(dlv, "discarded")]
    assert len(await kit.attempts_of(dlv)) == 1, "its history stays"
    # Discarded for good: neither redrivable nor discardable again, never claimed.
    assert_problem(await client.post(f"/v1/dlq/{dlv}/redrive"), 404)
    assert_problem(await client.delete(f"/v1/dlq/{dlv}"), 404)
    assert (await client.post("/v1/dlq/redrive", json={})).json() == {"redriven": 0}
    assert await kit.claim() == []


async def test_discard_unblocks_a_blocked_key(client: httpx.AsyncClient, kit: DeliveryKit) -> None:
    sub = await kit.subscription(on_dead_letter="block")
    first, second, third = await kit.events(("t", "k"), ("t", "k"), ("t", "k"))
    await kill_all(kit)
    assert await kit.claim() == [], "the key waits on its dead letter"

    response = await client.delete(f"/v1/dlq/{await delivery_of(kit, first, sub)}")
    assert response.status_code == 204
    (claimed,) = await kit.claim()
    assert claimed.event_id == second.id
    assert await kit.claim() == [], "one at a time still"
    await kit.finish(claimed, "succeeded")
    assert [c.event_id for c in await kit.claim()] == [third.id]


# -- the attempts of an event ------------------------------------------------------


async def test_event_attempts_list_every_attempt_with_its_delivery(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    a = await kit.subscription()
    b = await kit.subscription()
    (event,) = await kit.events(("t", "k"))
    claimed = {c.subscription_id: c for c in await kit.claim()}
    await kit.finish(claimed[a.id], "pending", status_code=502, next_attempt_at=datetime.now(UTC))
    await kit.finish(claimed[b.id], "succeeded")
    (again,) = await kit.claim()
    await kit.finish(again, "dead", status_code=500)

    response = await client.get(f"/v1/events/{event.id}/attempts")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    dlv_a = await delivery_of(kit, event, a)
    dlv_b = await delivery_of(kit, event, b)
    assert sorted((i["delivery_id"], i["attempt"], i["status_code"]) for i in items) == sorted(
        [(dlv_a, 1, 502), (dlv_a, 2, 500), (dlv_b, 1, 200)]
    )
    for i in items:
        assert set(i) == ATTEMPT_FIELDS | {"delivery_id"}

    shown = (await client.get(f"/v1/events/{event.id}")).json()
    assert {d["id"]: d["status"] for d in shown["deliveries"]} == {
        dlv_a: "dead",
        dlv_b: "succeeded",
    }
    assert {d["id"]: d["attempts"] for d in shown["deliveries"]} == {dlv_a: 2, dlv_b: 1}


async def test_event_attempts_empty_and_unknown(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    (event,) = await kit.events(("t", None))
    response = await client.get(f"/v1/events/{event.id}/attempts")
    assert response.status_code == 200
    assert response.json() == {"items": []}
    assert_problem(await client.get("/v1/events/evt_unknown/attempts"), 404)
