"""Idempotency-Key header values (IETF draft -06, RFC 8941 sf-string) and fingerprints."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.domain.idempotency import MAX_KEY_LENGTH, fingerprint, parse_key
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
