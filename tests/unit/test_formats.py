"""The ``cloudevents`` format, read back with the CloudEvents SDK: structured
JSON (brokers) and binary mode (webhooks); ``eventrelay`` stays API.md's body."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cloudevents.core.bindings.http import HTTPMessage, from_binary_event, from_structured_event

from app.domain import formats, webhook

EVENT = ("evt_01", "order.created", "2026-12-01T10:00:00.123456Z", "customer/42 é", 2)
DATA = '{"total": 42, "items": [1, 2]}'


def test_structured_is_a_cloudevent_the_sdk_reads() -> None:
    body = formats.body("structured", *EVENT, DATA)
    event = from_structured_event(HTTPMessage({"content-type": formats.STRUCTURED}, body))
    assert event.get_id() == "evt_01"
    assert event.get_source() == "eventrelay"
    assert event.get_type() == "order.created"
    assert event.get_specversion() == "1.0"
    assert event.get_time() == datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert event.get_extension("partitionkey") == "customer/42 é"
    assert event.get_extension("schemaversion") == 2
    assert event.get_dataschema() is None
    assert event.get_data() == {"total": 42, "items": [1, 2]}


def test_binary_is_a_cloudevent_the_sdk_reads() -> None:
    body = formats.body("binary", *EVENT, DATA)
    headers = formats.binary_headers(*EVENT) | {"content-type": formats.JSON}
    assert all(value.isascii() for value in headers.values())
    event = from_binary_event(HTTPMessage(headers, body))
    assert event.get_id() == "evt_01"
    assert event.get_source() == "eventrelay"
    assert event.get_type() == "order.created"
    assert event.get_extension("partitionkey") == "customer/42 é"
    assert event.get_data() == {"total": 42, "items": [1, 2]}
    assert body == DATA.encode(), "the data as stored, not re-encoded"


def test_without_a_key_there_is_no_partitionkey() -> None:
    event_id, event_type, received_at, _, _ = EVENT
    body = json.loads(
        formats.body("structured", event_id, event_type, received_at, None, None, "1")
    )
    assert "partitionkey" not in body
    assert "schemaversion" not in body
    assert body["data"] == 1
    assert "ce-partitionkey" not in formats.binary_headers(
        event_id, event_type, received_at, None, None
    )


def test_the_eventrelay_format_is_the_webhook_body() -> None:
    assert formats.body("eventrelay", *EVENT, DATA) == webhook.body(*EVENT, DATA)


def test_which_shape_each_destination_gets() -> None:
    assert formats.shape("eventrelay", "rabbitmq") == "eventrelay"
    assert formats.shape("cloudevents", "webhook") == "binary"
    for kind in ("rabbitmq", "nats", "redis"):
        assert formats.shape("cloudevents", kind) == "structured"
    assert formats.content_type("structured") == "application/cloudevents+json"
