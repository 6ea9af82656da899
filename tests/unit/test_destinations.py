"""Destinations on the way in (API-v2 "Destinations"): shapes and their JSON
pointers, name templates, and credentials that answers never show."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

from app.domain import destinations
from app.domain.destinations import (
    RabbitMQDestination,
    check_template,
    hide_secrets,
    masked_url,
    render,
)
from app.errors import ValidationFailed
from app.worker.destinations import DestinationSender
from app.worker.protocol import Message, Route
from app.worker.sender import HttpSender


def pointers(raw: Any) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        destinations.parse(raw)
    return [e.loc for e in caught.value.errors]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], ["/destination"]),
        ({}, ["/destination/type"]),
        ({"type": "sqs"}, ["/destination/type"]),
        ({"type": "nats"}, ["/destination/url", "/destination/subject"]),
        ({"type": "nats", "url": "redis://h", "subject": "s"}, ["/destination/url"]),
        ({"type": "nats", "url": "nats://h:99999", "subject": "s"}, ["/destination/url"]),
        (
            {"type": "redis", "url": "redis://h", "stream": "s", "maxlen": -1},
            ["/destination/maxlen"],
        ),
        ({"type": "redis", "url": "redis://h", "stream": "a\x00"}, ["/destination/stream"]),
        (
            {"type": "rabbitmq", "url": "amqp://h", "exchange": 5, "routing_key": "{nope}"},
            ["/destination/exchange", "/destination/routing_key"],
        ),
    ],
)
def test_malformed_destinations_point_at_the_field(raw: Any, expected: list[str]) -> None:
    assert pointers(raw) == expected


def test_a_parsed_destination_keeps_its_settings_apart_from_the_url() -> None:
    parsed = destinations.parse(
        {"type": "rabbitmq", "url": "amqps://u:p@h/v", "exchange": "", "routing_key": "{type}"}
    )
    assert isinstance(parsed, RabbitMQDestination)
    assert parsed.config() == {"type": "rabbitmq", "exchange": "", "routing_key": "{type}"}
    assert parsed.shown()["url"] == "amqps://u:***@h/v"


@pytest.mark.parametrize(
    "template", ["events", "{type}", "t.{tenant_id}.{type}.{key}", "a{{literal}}b", "{key}-{key}"]
)
def test_templates_that_are_accepted(template: str) -> None:
    assert check_template(template) == template


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{customer}", "unknown placeholder {customer}"),
        ("{}", "unknown placeholder {}"),
        ("{0}", "unknown placeholder {0}"),
        ("{type.name}", "unknown placeholder {type.name}"),
        ("{type:>10}", "takes no format"),
        ("{type!r}", "takes no format"),
        ("{type", "not a valid template"),
        ("type}", "not a valid template"),
    ],
)
def test_templates_that_are_refused(template: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        check_template(template)


def test_render() -> None:
    names = {"event_type": "order.created", "tenant_id": "default"}
    assert render("{tenant_id}.{type}.{key}", key="c-42", **names) == "default.order.created.c-42"
    assert render("{type}.{key}", key=None, **names) == "order.created."
    assert render("a{{b}}", key=None, **names) == "a{b}"
    # A key is a value, never a template of its own.
    assert render("{key}", key="{type}", **names) == "{type}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@h:5672/v", "amqp://guest:***@h:5672/v"),
        ("rediss://:pw@h:6380/2", "rediss://:***@h:6380/2"),
        ("redis://h:6379", "redis://h:6379"),
        ("nats://s3cr3t-token@h:4222", "nats://***@h:4222"),
        ("nats://user:pw@h", "nats://user:***@h"),
        ("amqp://user@h", "amqp://user@h"),
    ],
)
def test_masked_urls(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_hide_secrets_removes_the_password_from_a_message() -> None:
    url = "amqp://guest:pw-123@h/"
    text = f"cannot connect to {url}: auth failed for guest with pw-123"
    hidden = hide_secrets(text, url)
    assert "pw-123" not in hidden
    assert "amqp://guest:***@h/" in hidden


async def test_a_worker_without_the_library_fails_attempts_with_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("aio_pika", "app.worker.brokers.rabbitmq"):
        monkeypatch.setitem(sys.modules, name, None)  # as if aio-pika were not installed
    http = HttpSender(allow_private=True)
    sender = DestinationSender(http, allow_private=True)
    try:
        message = Message(b"{}", {}, 1.0, "evt_1", "t", None, Route("k"))
        result = await sender.connection("amqp://h/").send(message)
    finally:
        await sender.close()
    assert result.outcome.error is not None
    assert "aio-pika is not installed" in result.outcome.error
    assert not result.outcome.accepted


@pytest.mark.parametrize(
    ("template", "used"),
    [
        ("orders", set()),
        ("a{{b}}", set()),
        ("{tenant_id}.{type}", {"tenant_id", "type"}),
        ("{type}.{key}.{type}", {"type", "key"}),
    ],
)
def test_placeholders(template: str, used: set[str]) -> None:
    assert destinations.placeholders(template) == used
