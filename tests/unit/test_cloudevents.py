"""CloudEvents 1.0 mapped to events: structured, binary and batch, and what is refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.cloudevents import (
    InvalidCloudEvent,
    pair_key,
    parse_batch,
    parse_binary,
    parse_structured,
)
from app.errors import BadRequest, UnsupportedMediaType, ValidationFailed

EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "A234-1234-1234",
    "source": "https://shop.example.com/orders",
    "type": "order.created",
    "time": "2026-11-26T10:00:00+01:00",
    "partitionkey": "customer-42",
    "schemaversion": 2,
    "subject": "ord_1",
    "datacontenttype": "application/json",
    "data": {"total": 42},
}
HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "A234-1234-1234",
    "ce-source": "https://shop.example.com/orders",
    "ce-type": "order.created",
    "ce-time": "2026-11-26T10:00:00%2B01:00",
    "ce-partitionkey": "customer-42",
    "ce-schemaversion": "2",
    "ce-subject": "ord_1",
    "content-type": "application/json",
}


def locs(exc: pytest.ExceptionInfo[Any]) -> list[str]:
    return [e.loc for e in exc.value.errors]


# -- mapping ----------------------------------------------------------------------------


def test_structured_mapping() -> None:
    mapped = parse_structured(EVENT)
    assert mapped.event.type == "order.created"
    assert mapped.event.key == "customer-42"
    assert mapped.event.data == {"total": 42}
    assert mapped.event.schema_version == 2
    assert mapped.event.occurred_at == datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert mapped.pair_key == pair_key(EVENT["source"], EVENT["id"])
    assert (mapped.data_loc, mapped.version_loc, mapped.id_loc) == (
        "/data",
        "/schemaversion",
        "/id",
    )


def test_binary_mapping_matches_structured() -> None:
    structured = parse_structured(EVENT)
    binary = parse_binary(HEADERS, b'{"total": 42}')
    assert binary.event == structured.event
    assert binary.pair_key == structured.pair_key
    assert binary.attributes == structured.attributes  # so a replay across modes matches
    assert (binary.data_loc, binary.version_loc, binary.id_loc) == (
        "",
        "header:ce-schemaversion",
        "header:ce-id",
    )


def test_optional_attributes_may_be_absent() -> None:
    minimal = {k: EVENT[k] for k in ("specversion", "id", "source", "type")}
    mapped = parse_structured(minimal)
    assert mapped.event.key is None
    assert mapped.event.data is None
    assert mapped.event.schema_version is None
    assert mapped.event.occurred_at is None


def test_null_attributes_are_absent() -> None:
    assert parse_structured({**EVENT, "subject": None}).attributes.get("subject") is None


def test_data_base64_of_json() -> None:
    encoded = base64.b64encode(b'{"total": 7}').decode()
    event = {k: v for k, v in EVENT.items() if k != "data"} | {"data_base64": encoded}
    assert parse_structured(event).event.data == {"total": 7}


def test_text_data_is_a_string() -> None:
    headers = HEADERS | {"content-type": "text/plain; charset=utf-8"}
    assert parse_binary(headers, "héllo".encode()).event.data == "héllo"


def test_binary_data_is_415() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_binary(HEADERS | {"content-type": "application/octet-stream"}, b"\x00\x01")
    encoded = base64.b64encode(b"\x00\x01").decode()
    event = {k: v for k, v in EVENT.items() if k != "data"} | {
        "data_base64": encoded,
        "datacontenttype": "image/png",
    }
    with pytest.raises(UnsupportedMediaType):
        parse_structured(event)


def test_empty_binary_body_is_null_data() -> None:
    assert parse_binary(HEADERS, b"").event.data is None


def test_binary_json_data_is_parsed_strictly() -> None:
    with pytest.raises(BadRequest):
        parse_binary(HEADERS, b'{"total": NaN}')
    with pytest.raises(ValidationFailed) as exc:
        parse_binary(HEADERS, b'{"note": "a\\u0000b"}')
    assert locs(exc) == ["/note"]


def test_percent_encoded_header_values() -> None:
    mapped = parse_binary(HEADERS | {"ce-partitionkey": "caf%C3%A9%20au%20lait"}, b"{}")
    assert mapped.event.key == "café au lait"


def test_the_pair_key_is_unambiguous_and_fits_the_key_column() -> None:
    assert pair_key("a:b", "c") != pair_key("a", "b:c")
    key = pair_key("s" * 5000, "i" * 5000)
    assert len(key) <= 255
    assert key.isascii()
    assert key.isprintable()


# -- not a CloudEvent: 400 ------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_missing_required_attribute_is_400(missing: str) -> None:
    with pytest.raises(InvalidCloudEvent) as exc:
        parse_structured({k: v for k, v in EVENT.items() if k != missing})
    assert exc.value.status == 400
    assert locs(exc) == [f"/{missing}"]


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type"])
def test_missing_required_header_is_400(missing: str) -> None:
    with pytest.raises(InvalidCloudEvent) as exc:
        parse_binary({k: v for k, v in HEADERS.items() if k != missing}, b"{}")
    assert locs(exc) == [f"header:{missing}"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"specversion": "0.3"}, "/specversion"),
        ({"id": ""}, "/id"),
        ({"id": 7}, "/id"),
        ({"source": ""}, "/source"),
        ({"time": "yesterday"}, "/time"),
        ({"time": "2026-11-26T10:00:00"}, "/time"),  # no offset
        ({"subject": ""}, "/subject"),
        ({"partitionKey": "x"}, "/partitionKey"),  # extension names are lower-case
        ({"weird": {"nested": True}}, "/weird"),
        ({"ratio": 0.5}, "/ratio"),
    ],
)
def test_invalid_attribute_is_400(change: dict[str, Any], loc: str) -> None:
    with pytest.raises(InvalidCloudEvent) as exc:
        parse_structured(EVENT | change)
    assert loc in locs(exc)


def test_data_and_data_base64_together_is_400() -> None:
    with pytest.raises(InvalidCloudEvent):
        parse_structured(EVENT | {"data_base64": "e30="})


def test_bad_base64_is_400() -> None:
    event = {k: v for k, v in EVENT.items() if k != "data"} | {"data_base64": "***"}
    with pytest.raises(InvalidCloudEvent):
        parse_structured(event)


def test_not_an_object_is_400() -> None:
    with pytest.raises(InvalidCloudEvent):
        parse_structured([EVENT])


# -- a CloudEvent eventrelay cannot take: 422 --------------------------------------------------


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"type": "order created"}, "/type"),
        ({"partitionkey": "k" * 201}, "/partitionkey"),
        ({"partitionkey": 42}, "/partitionkey"),
        ({"schemaversion": 0}, "/schemaversion"),
        ({"schemaversion": "two"}, "/schemaversion"),
        ({"schemaversion": True}, "/schemaversion"),
    ],
)
def test_unacceptable_mapping_is_422(change: dict[str, Any], loc: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_structured(EVENT | change)
    assert exc.value.status == 422
    assert loc in locs(exc)


# -- batches --------------------------------------------------------------------------------------


def test_batch_maps_each_event_with_its_own_locations() -> None:
    first, second = parse_batch([EVENT, EVENT | {"id": "2"}])
    assert first.pair_key != second.pair_key
    assert (second.data_loc, second.version_loc, second.id_loc) == (
        "/1/data",
        "/1/schemaversion",
        "/1/id",
    )


def test_batch_names_every_bad_event() -> None:
    with pytest.raises(InvalidCloudEvent) as exc:
        parse_batch([EVENT, {"specversion": "1.0"}, EVENT, "x"])
    assert locs(exc) == ["/1/id", "/1/source", "/1/type", "/3"]


def test_batch_unacceptable_events_are_422() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_batch([EVENT, EVENT | {"type": "no spaces allowed"}])
    assert locs(exc) == ["/1/type"]


def test_batch_must_be_a_non_empty_array_of_at_most_500() -> None:
    with pytest.raises(InvalidCloudEvent):
        parse_batch(EVENT)
    with pytest.raises(ValidationFailed):
        parse_batch([])
    with pytest.raises(ValidationFailed):
        parse_batch([EVENT] * 501)
