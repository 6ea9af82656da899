"""``POST /v1/subscriptions/{id}/replay`` on both databases: new deliveries of every
stored matching event in ``[since, until)``, in the events' original per-key order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from app.domain.events import NewEvent
from app.store import schema
from tests.integration.conftest import DeliveryKit
from tests.integration.support import assert_problem

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def received_at(kit: DeliveryKit, event: NewEvent, at: datetime) -> None:
    e = schema.events
    async with kit.db.write() as conn:
        await conn.execute(update(e).where(e.c.id == event.id).values(received_at=at))


async def replay(client: httpx.AsyncClient, sub_id: str, **window: datetime) -> httpx.Response:
    return await client.post(
        f"/v1/subscriptions/{sub_id}/replay", json={k: iso(v) for k, v in window.items()}
    )


async def test_replay_delivers_every_matching_event_of_the_window_again(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    # Stored before the subscription exists: no deliveries of their own.
    events = await kit.events(
        ("order.created", None),  # 0: before since
        ("order.created", None),  # 1: exactly since (included)
        ("order.paid", None),  # 2: in the window
        ("user.created", None),  # 3: in the window, type does not match
        ("order.created", None),  # 4: in the window
        ("order.created", None),  # 5: exactly until (excluded)
        ("order.created", None),  # 6: after until
    )
    for i, event in enumerate(events):
        await received_at(kit, event, T0 + timedelta(minutes=i))
    sub = await kit.subscription(event_types=["order.*"], ordering="none")
    assert await kit.claim() == []

    response = await replay(
        client, sub.id, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=5)
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"replayed": 3}

    expected = [events[1].id, events[2].id, events[4].id]
    claimed = await kit.claim()
    assert [c.event_id for c in claimed] == expected
    assert all(c.subscription_id == sub.id and c.attempts == 0 for c in claimed)
    for c in claimed:
        await kit.finish(c, "succeeded")

    # Without ``until``: everything from ``since`` on, again (new deliveries each time).
    response = await replay(client, sub.id, since=T0 + timedelta(minutes=4))
    assert response.json() == {"replayed": 3}
    assert [c.event_id for c in await kit.claim()] == [e.id for e in events[4:]]
    assert len(await kit.deliveries_of(events[4].id)) == 2


async def test_replay_shows_as_deliveries_of_the_event(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    (event,) = await kit.events(("t", None))
    sub = await kit.subscription()
    since = datetime.now(UTC) - timedelta(hours=1)
    assert (await replay(client, sub.id, since=since)).json() == {"replayed": 1}
    shown = (await client.get(f"/v1/events/{event.id}")).json()
    assert [(d["subscription_id"], d["status"]) for d in shown["deliveries"]] == [
        (sub.id, "pending")
    ]


async def test_replay_by_key_goes_one_at_a_time_in_the_original_order(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    events = await kit.events(
        ("t", "k1"), ("t", "k2"), ("t", "k1"), ("t", None), ("t", "k1"), ("t", "k2")
    )
    sub = await kit.subscription(ordering="key")
    since = datetime.now(UTC) - timedelta(hours=1)
    assert (await replay(client, sub.id, since=since)).json() == {"replayed": 6}

    order: dict[str | None, list[str]] = {}
    by_id = {e.id: e for e in events}
    for _ in range(10):
        claimed = await kit.claim()
        if not claimed:
            break
        keys = [by_id[c.event_id].key for c in claimed if by_id[c.event_id].key]
        assert len(keys) == len(set(keys)), "two deliveries of one key out at once"
        assert await kit.claim() == [], "nothing more until the heads finish"
        for c in claimed:
            order.setdefault(by_id[c.event_id].key, []).append(c.event_id)
            await kit.finish(c, "succeeded")
    for key in ("k1", "k2", None):
        assert order[key] == [e.id for e in events if e.key == key], key


async def test_replay_behind_a_pending_delivery_of_the_key_waits(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    sub = await kit.subscription(ordering="key")
    (old,) = await kit.events(("t", "k"))
    (head,) = await kit.claim()  # the original delivery is out
    assert (await replay(client, sub.id, since=datetime.now(UTC) - timedelta(hours=1))).json() == {
        "replayed": 1
    }
    assert await kit.claim() == [], "the replayed delivery waits behind the in-flight one"
    await kit.finish(head, "succeeded")
    (again,) = await kit.claim()
    assert again.event_id == old.id
    assert again.id != head.id


async def test_replay_window_must_not_be_empty(client: httpx.AsyncClient, kit: DeliveryKit) -> None:
    sub = await kit.subscription()
    assert_problem(await replay(client, sub.id, since=T0, until=T0), 422)
    assert_problem(await replay(client, sub.id, since=T0, until=T0 - timedelta(seconds=1)), 422)
    missing = await client.post(f"/v1/subscriptions/{sub.id}/replay", json={})
    assert_problem(missing, 422)
    naive = await client.post(
        f"/v1/subscriptions/{sub.id}/replay", json={"since": "2026-01-10T12:00:00"}
    )
    assert_problem(naive, 422)


async def test_replay_of_an_unknown_subscription_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await replay(client, "sub_unknown", since=T0), 404)


async def test_replay_of_an_empty_window_replays_nothing(
    client: httpx.AsyncClient, kit: DeliveryKit
) -> None:
    await kit.events(("t", None))
    sub = await kit.subscription()
    future = datetime.now(UTC) + timedelta(days=1)
    assert (await replay(client, sub.id, since=future)).json() == {"replayed": 0}
    assert await kit.claim() == []
