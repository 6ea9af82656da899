"""Idempotency-Key header values (IETF draft -06, RFC 8941 sf-string), fingerprints,
and the plan of a flush."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from app.domain.events import NewEvent
from app.domain.idempotency import (
    MAX_KEY_LENGTH,
    Accepted,
    KeyReused,
    StoredKey,
    UnitResult,
    answers,
    decide,
    fingerprint,
    keys,
    parse_key,
)
from app.errors import BadRequest


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ("  abc\t", "abc"),
        (' "abc" ', "abc"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ('"\\\\"', "\\"),
        ('"\\""', '"'),
        ("8e0b6f2c-27bb-4bd3-9a3c-5a1f0e0b7c51", "8e0b6f2c-27bb-4bd3-9a3c-5a1f0e0b7c51"),
        ("k" * MAX_KEY_LENGTH, "k" * MAX_KEY_LENGTH),
        ('"' + "k" * MAX_KEY_LENGTH + '"', "k" * MAX_KEY_LENGTH),
        # The limit counts the key, not its escaped spelling: 255 quotes, 512 characters raw.
        ('"' + '\\"' * MAX_KEY_LENGTH + '"', '"' * MAX_KEY_LENGTH),
    ],
)
def test_parse_key_accepts(raw: str, key: str) -> None:
    assert parse_key(raw) == key


def test_quoted_and_bare_forms_are_the_same_key() -> None:
    assert parse_key('"order-42"') == parse_key("order-42")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param('""', id="empty-quoted"),
        pytest.param('"', id="lone-quote"),
        pytest.param('"abc', id="unterminated"),
        pytest.param('"abc\\"', id="unterminated-after-escape"),
        pytest.param('"a\\nb"', id="invalid-escape-n"),
        pytest.param('"a\\u0041"', id="invalid-escape-u"),
        pytest.param('"a"b"', id="unescaped-inner-quote"),
        pytest.param("k" * (MAX_KEY_LENGTH + 1), id="256-bare"),
        pytest.param('"' + "k" * (MAX_KEY_LENGTH + 1) + '"', id="256-quoted"),
        pytest.param('"' + '\\"' * (MAX_KEY_LENGTH + 1) + '"', id="256-after-unquoting"),
        pytest.param("café", id="non-ascii"),
        pytest.param('"café"', id="non-ascii-quoted"),
        pytest.param("a\x01b", id="control-char"),
        pytest.param("a\x7fb", id="delete-char"),
        pytest.param('"a\x00b"', id="nul-quoted"),
    ],
)
def test_parse_key_rejects(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_key(raw)
    assert caught.value.status == 400


def test_fingerprint_ignores_key_order_and_whitespace() -> None:
    compact = orjson.loads(b'{"type":"a","data":{"x":1,"y":[1,2]}}')
    spaced = orjson.loads(b'{ "data" : { "y" : [ 1, 2 ] , "x" : 1 } ,\n "type" : "a" }')
    assert fingerprint(compact) == fingerprint(spaced)


def test_fingerprint_is_a_sha256_hex_digest() -> None:
    digest = fingerprint({"type": "a"})
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"data": 1}, {"data": 2}),
        ({"data": 1}, {"data": "1"}),
        ({"data": [1, 2]}, {"data": [2, 1]}),
        ({"data": None}, {}),
        ({"type": "a", "key": None}, {"type": "a", "key": "k"}),
        ({"data": {"a": {"b": 1}}}, {"data": {"a": {"b": 1, "c": 1}}}),
    ],
)
def test_fingerprint_differs_when_meaning_differs(one: Any, other: Any) -> None:
    assert fingerprint(one) != fingerprint(other)


# -- the plan of a flush: new, replay, or a reused key ------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=1)


def _event(n: int, key: str | None, body: str = "a") -> NewEvent:
    return NewEvent(
        id=f"evt_{n}",
        type="t",
        key=None,
        data_json="{}",
        schema_version=None,
        occurred_at=None,
        received_at=NOW,
        idempotency_key=key,
        fingerprint=None if key is None else fingerprint(body),
    )


def _stored(event_id: str, body: str = "a", *, at: datetime = NOW) -> StoredKey:
    return StoredKey(fingerprint(body), event_id, f"body of {event_id}", at)


def _answers(
    units: list[list[NewEvent]], stored: dict[tuple[str, str], StoredKey]
) -> list[UnitResult]:
    decision = decide(units, stored, CUTOFF)
    return answers(decision, {e.id: f"body of {e.id}" for e in decision.new_events})


def test_a_new_key_and_no_key_store_their_events() -> None:
    units = [[_event(1, "k1")], [_event(2, None)]]
    decision = decide(units, {}, CUTOFF)
    assert [e.id for e in decision.new_events] == ["evt_1", "evt_2"]
    assert _answers(units, {}) == [
        [Accepted("evt_1", "body of evt_1", False)],
        [Accepted("evt_2", "body of evt_2", False)],
    ]


def test_a_stored_key_with_the_same_body_is_a_replay() -> None:
    units = [[_event(1, "k")]]
    decision = decide(units, {("default", "k"): _stored("evt_0")}, CUTOFF)
    assert decision.new_events == []
    assert _answers(units, {("default", "k"): _stored("evt_0")}) == [
        [Accepted("evt_0", "body of evt_0", True)]
    ]


def test_reused_keys_name_the_items_and_sink_only_their_request() -> None:
    units = [[_event(1, "k"), _event(2, "j"), _event(3, "k", "b")], [_event(4, "z")]]
    stored = {("default", "j"): _stored("evt_0", "other")}
    decision = decide(units, stored, CUTOFF)
    assert decision.plans[0] == KeyReused((1, 2))
    assert [e.id for e in decision.new_events] == ["evt_4"]


def test_a_key_claimed_earlier_in_the_flush_is_replayed_or_reused() -> None:
    units = [[_event(1, "k")], [_event(2, "k")], [_event(3, "k", "b")]]
    results = _answers(units, {})
    assert results == [
        [Accepted("evt_1", "body of evt_1", False)],
        [Accepted("evt_1", "body of evt_1", True)],
        KeyReused((0,)),
    ]


def test_an_expired_key_is_taken_over() -> None:
    units = [[_event(1, "k", "b")]]
    expired = {("default", "k"): _stored("evt_0", at=CUTOFF - timedelta(seconds=1))}
    decision = decide(units, expired, CUTOFF)
    assert decision.reclaim == [("default", "k")]
    assert [e.id for e in decision.new_events] == ["evt_1"]


def test_keys_are_the_distinct_keys_sorted() -> None:
    assert keys([[_event(1, "b"), _event(2, None)], [_event(3, "a"), _event(4, "b")]]) == [
        ("default", "a"),
        ("default", "b"),
    ]


def test_keys_are_per_tenant() -> None:
    """The same key in two tenants is two events; a tenant's stored key replays
    only in that tenant."""
    a = dataclasses.replace(_event(1, "k"), tenant_id="a")
    b = dataclasses.replace(_event(2, "k"), tenant_id="b")
    assert keys([[a], [b]]) == [("a", "k"), ("b", "k")]
    decision = decide([[a], [b]], {("a", "k"): _stored("evt_0")}, CUTOFF)
    assert [e.id for e in decision.new_events] == ["evt_2"]
    assert answers(decision, {"evt_2": "body of evt_2"}) == [
        [Accepted("evt_0", "body of evt_0", True)],
        [Accepted("evt_2", "body of evt_2", False)],
    ]
