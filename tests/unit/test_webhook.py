"""The request a subscriber receives: body bytes and headers (API.md, Delivery)."""

from __future__ import annotations

import json

import pytest

from app.domain import webhook
from app.domain.signing import secret_key, sign

EVENT_ID = "evt_01JD0000000000000000000000"
RECEIVED_AT = "2026-11-26T10:00:00.123456Z"
KEY = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
RESERVED = ("content-type", "webhook-id", "webhook-timestamp", "webhook-signature", "user-agent")


def test_body_shape_and_field_order() -> None:
    payload = webhook.body(EVENT_ID, "order.created", RECEIVED_AT, "customer-42", 2, '{"total":42}')
    assert payload == (
        b'{"id":"evt_01JD0000000000000000000000","type":"order.created",'
        b'"timestamp":"2026-11-26T10:00:00.123456Z","key":"customer-42",'
        b'"schema_version":2,"data":{"total":42}}'
    )


def test_absent_key_and_schema_version_are_null() -> None:
    payload = webhook.body(EVENT_ID, "t", RECEIVED_AT, None, None, "null")
    assert json.loads(payload) == {
        "id": EVENT_ID,
        "type": "t",
        "timestamp": RECEIVED_AT,
        "key": None,
        "schema_version": None,
        "data": None,
    }


@pytest.mark.parametrize(
    "data_json",
    [
        '{"total": 42,  "spaced" : true}',
        '{"big": 9007199254740993, "exp": 1.0e+3, "neg0": -0.0}',
        '"caf\\u00e9 \\ud83d\\ude00"',
        '"héllo — 中文"',
        "[1, 2.50, null]",
        "0",
    ],
)
def test_data_is_spliced_byte_for_byte(data_json: str) -> None:
    payload = webhook.body(EVENT_ID, "t", RECEIVED_AT, "k", None, data_json)
    assert payload.endswith(b',"data":' + data_json.encode() + b"}")
    assert json.loads(payload)["data"] == json.loads(data_json)


def test_strings_in_the_envelope_are_escaped() -> None:
    payload = webhook.body(EVENT_ID, "t", RECEIVED_AT, 'a"b\\c\n', None, "{}")
    assert json.loads(payload)["key"] == 'a"b\\c\n'


def _headers(custom: dict[str, str], keys: list[bytes] | None = None) -> dict[str, str]:
    return webhook.headers(
        event_id=EVENT_ID,
        timestamp=1764151200,
        payload=b'{"x":1}',
        keys=[KEY] if keys is None else keys,
        user_agent="eventrelay/1.2.3",
        custom=custom,
    )


def test_standard_headers() -> None:
    headers = _headers({})
    assert headers == {
        "content-type": "application/json",
        "webhook-id": EVENT_ID,
        "webhook-timestamp": "1764151200",
        "webhook-signature": sign(KEY, EVENT_ID, 1764151200, b'{"x":1}'),
        "user-agent": "eventrelay/1.2.3",
    }


def test_custom_headers_are_sent_too() -> None:
    headers = _headers({"X-Team": "billing", "Authorization": "Bearer abc"})
    assert headers["X-Team"] == "billing"
    assert headers["Authorization"] == "Bearer abc"
    assert headers["webhook-id"] == EVENT_ID


def test_signature_header_has_one_entry_per_key() -> None:
    other = secret_key("whsec_" + "A" * 43 + "=")
    headers = _headers({}, [KEY, other])
    assert headers["webhook-signature"].split(" ") == [
        sign(KEY, EVENT_ID, 1764151200, b'{"x":1}'),
        sign(other, EVENT_ID, 1764151200, b'{"x":1}'),
    ]


def _values(headers: dict[str, str], name: str) -> list[str]:
    """Every value that would go on the wire under ``name`` (names are case-insensitive)."""
    return [v for k, v in headers.items() if k.lower() == name]


@pytest.mark.parametrize(
    "spelling", [str.lower, str.title, str.upper], ids=["lower", "title", "upper"]
)
def test_custom_headers_cannot_override_ours(spelling: object) -> None:
    assert callable(spelling)
    custom = {spelling(name): "spoofed" for name in RESERVED}
    headers = _headers(custom)
    expected = _headers({})
    for name in RESERVED:
        assert _values(headers, name) == [expected[name]], name
