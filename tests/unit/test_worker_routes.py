"""A broker destination's routes, rendered once per event type (and key) rather
than per attempt: the same names as rendering every time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from app.domain.destinations import (
    NatsDestination,
    RabbitMQDestination,
    RedisDestination,
    WebhookDestination,
)
from app.store.events import StoredEvent
from app.worker.attempt import Routes, route
from app.worker.protocol import Route

EVENT = StoredEvent(1, "evt_1", "order.created", None, "{}", None, None, datetime.now(UTC))


def event(type_: str, key: str | None) -> StoredEvent:
    return replace(EVENT, type=type_, key=key)


@pytest.mark.parametrize(
    "destination",
    [
        NatsDestination(url="nats://h", subject="orders"),
        NatsDestination(url="nats://h", subject="{tenant_id}.{type}"),
        NatsDestination(url="nats://h", subject="{type}.{key}"),
        RabbitMQDestination(url="amqp://h", exchange="x", routing_key="{key}"),
        RedisDestination(url="redis://h", stream="s-{type}", maxlen=10),
    ],
)
def test_routes_are_the_rendered_ones(destination: NatsDestination) -> None:
    routes = Routes(destination, "t_1")
    events = [event(t, k) for t in ("a.b", "c") for k in (None, "k1", "k2", "k1")]
    for e in events * 2:
        assert routes.of(e) == route(destination, e, "t_1")


def test_a_route_is_rendered_once_per_type_and_key_it_uses() -> None:
    by_type = Routes(NatsDestination(url="nats://h", subject="s.{type}"), "t_1")
    assert by_type.of(event("a", "k1")) is by_type.of(event("a", "k2"))
    assert by_type.of(event("a", None)) != by_type.of(event("b", None))
    fixed = Routes(NatsDestination(url="nats://h", subject="{tenant_id}.s"), "t_1")
    assert fixed.of(event("a", "k1")) is fixed.of(event("b", None))
    assert fixed.of(event("a", None)) == Route("t_1.s")
    by_key = Routes(NatsDestination(url="nats://h", subject="s.{key}"), "t_1")
    assert by_key.of(event("a", "k1")) == Route("s.k1")
    assert by_key.of(event("a", "k2")) == Route("s.k2")


def test_routes_keep_a_bounded_number_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Routes, "LIMIT", 3)
    routes = Routes(NatsDestination(url="nats://h", subject="s.{key}"), "t_1")
    for n in range(10):
        assert routes.of(event("a", f"k{n}")) == Route(f"s.k{n}")
    assert len(routes._by_event) <= 3


def test_a_webhook_destination_has_no_route() -> None:
    routes = Routes(WebhookDestination(url="http://h/x"), "t_1")
    assert routes.of(EVENT) is None
