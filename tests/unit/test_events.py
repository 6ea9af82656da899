"""The accepted shape of an event (and of a batch), with JSON-pointer errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from app.domain.events import parse_batch, parse_event, pointer, rfc3339
from app.errors import ValidationFailed

TYPE_CHARS = "AZaz09._:/-"


def rejected_at(document: Any) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        parse_event(document)
    assert caught.value.status == 422
    return [e.loc for e in caught.value.errors]


def test_minimal_event_takes_the_defaults() -> None:
    event = parse_event({"type": "order.created"})
    assert (event.type, event.key, event.data, event.schema_version, event.occurred_at) == (
        "order.created",
        None,
        None,
        None,
        None,
    )


def test_full_event() -> None:
    event = parse_event(
        {
            "type": "order.created",
            "key": "customer-42",
            "data": {"total": 42, "items": [1, "x", None]},
            "schema_version": 2,
            "occurred_at": "2026-11-26T10:00:00Z",
        }
    )
    assert event.key == "customer-42"
    assert event.data == {"total": 42, "items": [1, "x", None]}
    assert event.schema_version == 2
    assert event.occurred_at == datetime(2026, 11, 26, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    "event_type",
    [
        TYPE_CHARS,
        "a",
        "t" * 200,
        "com.example/orders:created-v2",
        "urn:x/y_z",
        "eventrelay",
        "eventrelayed.x",
        "Eventrelay.x",
        "x.eventrelay.y",
    ],
)
def test_type_accepts(event_type: str) -> None:
    assert parse_event({"type": event_type}).type == event_type


@pytest.mark.parametrize(
    "event_type",
    [
        pytest.param("", id="empty"),
        pytest.param("t" * 201, id="201-chars"),
        pytest.param("order created", id="space"),
        pytest.param("order\n", id="trailing-newline"),
        pytest.param("\norder", id="leading-newline"),
        pytest.param("ordér", id="non-ascii"),
        pytest.param("order*", id="wildcard"),
        pytest.param("a,b", id="comma"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
        pytest.param(["a"], id="array"),
        pytest.param("eventrelay.delivery.dead_lettered", id="reserved"),
        pytest.param("eventrelay.mine", id="reserved-prefix"),
    ],
)
def test_type_rejects(event_type: Any) -> None:
    assert rejected_at({"type": event_type}) == ["/type"]


def test_type_is_required() -> None:
    assert rejected_at({"data": 1}) == ["/type"]


@pytest.mark.parametrize("key", ["k", "k" * 200, "customer 42 / ünïcode"])
def test_key_accepts(key: str) -> None:
    assert parse_event({"type": "a", "key": key}).key == key


@pytest.mark.parametrize("key", ["k" * 201, 42, {"k": 1}])
def test_key_rejects(key: Any) -> None:
    assert rejected_at({"type": "a", "key": key}) == ["/key"]


@pytest.mark.parametrize("version", [1, 2, 2_147_483_647])
def test_schema_version_accepts(version: int) -> None:
    assert parse_event({"type": "a", "schema_version": version}).schema_version == version


@pytest.mark.parametrize("version", [0, -1, 2_147_483_648, 1.5, "two", [1]])
def test_schema_version_rejects(version: Any) -> None:
    assert rejected_at({"type": "a", "schema_version": version}) == ["/schema_version"]


@pytest.mark.parametrize(
    ("raw", "moment"),
    [
        ("2026-11-26T10:00:00Z", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T12:00:00+02:00", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T10:00:00.123456Z", datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_occurred_at_accepts_aware_times(raw: str, moment: datetime) -> None:
    occurred_at = parse_event({"type": "a", "occurred_at": raw}).occurred_at
    assert occurred_at is not None
    assert occurred_at.tzinfo is not None
    assert occurred_at == moment


@pytest.mark.parametrize(
    "raw", ["2026-11-26T10:00:00", "2026-11-26 10:00:00", "yesterday", "2026-13-01T00:00:00Z"]
)
def test_occurred_at_rejects_naive_or_malformed_times(raw: str) -> None:
    assert rejected_at({"type": "a", "occurred_at": raw}) == ["/occurred_at"]


@pytest.mark.parametrize("field", ["id", "received_at", "deliveries", "Type", "idempotency_key"])
def test_extra_fields_are_rejected(field: str) -> None:
    assert rejected_at({"type": "a", field: "x"}) == [f"/{field}"]


def test_every_bad_field_is_named() -> None:
    assert sorted(rejected_at({"type": "", "key": "k" * 201, "schema_version": 0})) == [
        "/key",
        "/schema_version",
        "/type",
    ]


@pytest.mark.parametrize("document", [[], [{"type": "a"}], "a", 1, None, True])
def test_non_object_body_is_rejected(document: Any) -> None:
    assert rejected_at(document) == ["/"]


def test_batch_errors_point_into_the_item() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_batch(
            {
                "events": [
                    {"type": "ok", "idempotency_key": "k0"},
                    {"type": "not ok", "idempotency_key": "k1"},
                    {"type": "ok", "idempotency_key": "", "extra": 1},
                ]
            }
        )
    assert sorted(e.loc for e in caught.value.errors) == [
        "/events/1/type",
        "/events/2/extra",
        "/events/2/idempotency_key",
    ]


@pytest.mark.parametrize(
    "document",
    [{"events": []}, {"events": [{"type": "a"}] * 501}, {}, {"events": {}}, []],
)
def test_batch_shape_is_checked(document: Any) -> None:
    with pytest.raises(ValidationFailed):
        parse_batch(document)


def test_batch_of_500_is_accepted() -> None:
    batch = parse_batch({"events": [{"type": "a", "idempotency_key": f"k{i}"} for i in range(500)]})
    assert len(batch.events) == 500


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        ((), ""),
        (("type",), "/type"),
        (("events", 3, "data"), "/events/3/data"),
        (("a/b", "c~d"), "/a~1b/c~0d"),
        (("~1",), "/~01"),
    ],
)
def test_pointer_escapes_per_rfc_6901(loc: tuple[int | str, ...], expected: str) -> None:
    assert pointer(loc) == expected


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 11, 26, 10, tzinfo=UTC), "2026-11-26T10:00:00Z"),
        (datetime(2026, 11, 26, 12, tzinfo=timezone(timedelta(hours=2))), "2026-11-26T10:00:00Z"),
        (datetime(2026, 11, 26, 10, 0, 0, 5, tzinfo=UTC), "2026-11-26T10:00:00.000005Z"),
        (datetime(2026, 11, 26, 10), "2026-11-26T10:00:00Z"),  # naive is read as UTC
    ],
)
def test_rfc3339_is_utc_with_z(moment: datetime, text: str) -> None:
    assert rfc3339(moment) == text


def test_rfc3339_of_nothing_is_nothing() -> None:
    assert rfc3339(None) is None


def test_a_reserved_type_is_refused_in_a_batch_at_its_pointer() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_batch({"events": [{"type": "ok"}, {"type": "eventrelay.x"}]})
    assert [e.loc for e in caught.value.errors] == ["/events/1/type"]
    assert "reserved" in caught.value.errors[0].msg
