"""What the console reads stays bounded and still tells the truth: the event
search by delivery status finds every match exactly once whichever way it
reads (from the few deliveries in that status, or walking the events, with
or without a bound on how many it looks at); counts stop at their cap and say
so; the overview's figures are the tenant's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
from sqlalchemy import insert, select, update

from app.domain.counts import Count
from app.services import dlq as dlq_service
from app.services import overview as overview_service
from app.services.overview import OverviewService
from app.settings import Settings
from app.store import events as events_store
from app.store import schema
from app.store.subscriptions import Subscription
from app.worker.worker import worker_config
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import DeliveryKit

d, a = schema.deliveries, schema.attempts


async def tenant(client: httpx.AsyncClient, name: str) -> None:
    created = await client.post("/v1/tenants", json={"id": name, "name": name.title()})
    assert created.status_code == 201, created.text


async def with_deliveries(
    kit: DeliveryKit, tenant_id: str, count: int
) -> tuple[Subscription, list[str]]:
    """A subscription of the tenant and ``count`` events, each with its delivery."""
    sub = await kit.subscription(tenant_id=tenant_id, url=f"http://8.8.8.8/{tenant_id}")
    specs = [("order.created", f"k{n}") for n in range(count)]
    made = await kit.events(*specs, tenant_id=tenant_id)
    return sub, [e.id for e in made]


async def set_status(kit: DeliveryKit, event_ids: list[str], status: str) -> None:
    now = datetime.now(UTC)
    async with kit.db.write() as conn:
        await conn.execute(
            update(d)
            .where(d.c.event_id.in_(event_ids))
            .values(status=status, dead_lettered_at=now if status == "dead" else None)
        )


async def add_attempts(kit: DeliveryKit, event_ids: list[str], status_code: int) -> None:
    async with kit.db.write() as conn:
        ids = [r[0] for r in await conn.execute(select(d.c.id).where(d.c.event_id.in_(event_ids)))]
        await conn.execute(
            insert(a),
            [
                {
                    "delivery_id": i,
                    "attempt": 1,
                    "started_at": datetime.now(UTC),
                    "duration_ms": 3,
                    "status_code": status_code,
                }
                for i in ids
            ],
        )


async def search_all(
    kit: DeliveryKit,
    order: Literal["asc", "desc"],
    examine: int | None,
    **filters: Any,
) -> tuple[list[str], int]:
    """Every page of a search, followed to its end; and how many came back short."""
    found: list[str] = []
    short, after = 0, None
    for _ in range(200):
        page, after = await events_store.list_events(
            kit.db,
            "default",
            event_type=None,
            key=None,
            order=order,
            after_seq=after,
            limit=4,
            examine=examine,
            **filters,
        )
        found += [e.id for e in page]
        short += after is not None and len(page) < 4
        if after is None:
            return found, short
    raise AssertionError("the search never ended")


@pytest.mark.parametrize("candidates", [2_000, 3], ids=["from-deliveries", "walking-events"])
@pytest.mark.parametrize("examine", [None, 7])
@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_a_status_search_finds_every_match_once_whichever_way_it_reads(
    client: httpx.AsyncClient,
    kit: DeliveryKit,
    monkeypatch: pytest.MonkeyPatch,
    candidates: int,
    examine: int | None,
    order: Literal["asc", "desc"],
) -> None:
    monkeypatch.setattr(events_store, "STATUS_CANDIDATES", candidates)
    await tenant(client, "other")
    _, mine = await with_deliveries(kit, "default", 40)
    _, theirs = await with_deliveries(kit, "other", 10)
    dead = mine[3::4]  # 10 of 40, spread out
    await set_status(kit, mine, "succeeded")
    await set_status(kit, dead, "dead")
    await set_status(kit, theirs, "dead")
    await set_status(kit, mine[:2], "pending")

    found, short = await search_all(kit, order, examine, delivery_status="dead")
    assert found == (dead[::-1] if order == "desc" else dead)
    # Bounded to 7 events a page, a walk to 4 matches comes back short at times.
    assert (short > 0) == (examine is not None and candidates == 3)

    pending, _ = await search_all(kit, order, examine, delivery_status="pending")
    assert sorted(pending) == sorted(mine[:2])
    assert (await search_all(kit, order, examine, delivery_status="discarded"))[0] == []


async def test_a_time_search_bounded_to_a_few_events_goes_on_to_the_older_ones(
    kit: DeliveryKit,
) -> None:
    _, ids = await with_deliveries(kit, "default", 20)
    later = datetime.now(UTC) + timedelta(hours=1)
    async with kit.db.write() as conn:
        e = schema.events
        await conn.execute(update(e).where(e.c.id.in_(ids[-12:])).values(received_at=later))
    until = later - timedelta(minutes=1)

    found, short = await search_all(kit, "desc", 5, until=until)
    assert found == ids[:8][::-1]
    assert short >= 2  # the twelve later events take three windows of five to pass


async def test_counts_stop_at_their_cap_and_say_so(
    client: httpx.AsyncClient, kit: DeliveryKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dlq_service, "COUNT_CAP", 5)
    sub, ids = await with_deliveries(kit, "default", 8)
    await set_status(kit, ids[:7], "dead")

    signed = await client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
    assert signed.status_code == 303, signed.text
    page = await client.get("/console/dlq")
    assert page.status_code == 200, page.text
    assert "<strong>5+</strong> dead letters match" in page.text
    assert 'data-more="true"' in page.text
    one = await client.get("/console/dlq", params={"subscription_id": sub.id, "event_type": "x"})
    assert "<strong>0</strong> dead letters match" in one.text

    count = Count(7, 10_000)
    assert (str(count), count.more, bool(Count(0, 5))) == ("7", False, False)
    assert str(Count(10_000, 10_000)) == "10,000+"


async def test_the_overview_shows_the_tenant_its_own_figures(
    client: httpx.AsyncClient,
    kit: DeliveryKit,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overview_service, "SUBSCRIPTION_CAP", 2)
    await tenant(client, "other")
    mine, my_events = await with_deliveries(kit, "default", 6)
    theirs, their_events = await with_deliveries(kit, "other", 4)
    await set_status(kit, my_events[:3], "dead")
    await set_status(kit, their_events, "dead")
    await add_attempts(kit, my_events[:3], 500)
    await add_attempts(kit, my_events[3:4], 200)
    await add_attempts(kit, their_events, 200)
    await kit.set_subscription(mine.id, consecutive_failures=3)
    await kit.set_subscription(theirs.id, consecutive_failures=9)

    service = OverviewService(kit.db, worker_config(settings).circuit)
    view = await service.overview("default")
    assert (view.attempts_counted, view.attempts_succeeded) == (4, 1)
    assert (view.dlq_size, view.pending) == (Count(3, 10_000), Count(3, 10_000))
    assert sum(n.value for n in view.events_per_minute) == 6
    assert [s.id for s in view.failing] == [mine.id]
    (state,) = view.failing
    assert (str(state.pending), str(state.dead)) == ("2+", "2+")

    other = await service.overview("other")
    assert (other.attempts_counted, other.attempts_succeeded) == (4, 4)
    assert sum(n.value for n in other.events_per_minute) == 4
    assert [s.id for s in other.failing] == [theirs.id]


async def test_the_success_share_is_the_tenants_latest_attempts_however_busy_the_others(
    client: httpx.AsyncClient,
    kit: DeliveryKit,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overview_service, "LATEST_ATTEMPTS", 4)
    await tenant(client, "quiet")
    _, quiet_events = await with_deliveries(kit, "quiet", 5)
    await add_attempts(kit, quiet_events[:2], 500)
    await add_attempts(kit, quiet_events[2:4], 200)
    # Another tenant's attempts come later and outnumber the window.
    _, busy_events = await with_deliveries(kit, "default", 10)
    await add_attempts(kit, busy_events, 503)
    service = OverviewService(kit.db, worker_config(settings).circuit)

    quiet = await service.overview("quiet")
    assert (quiet.attempts_counted, quiet.attempts_succeeded, quiet.success_share) == (4, 2, 0.5)
    busy = await service.overview("default")
    assert (busy.attempts_counted, busy.attempts_succeeded) == (4, 0)

    # Newest events first: the latest two hold one attempt (a success).
    monkeypatch.setattr(overview_service, "LATEST_EVENTS", 2)
    quiet = await service.overview("quiet")
    assert (quiet.attempts_counted, quiet.attempts_succeeded) == (1, 1)
