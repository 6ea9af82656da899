"""List cursors: opaque, round-trip, and a 422 for anything this API did not issue."""

from __future__ import annotations

import base64

import pytest

from app.api.pagination import decode_cursor, decode_name_cursor, encode_cursor
from app.errors import ValidationFailed


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("seq", [0, 1, 7, 1234567, 2**31, 2**63 - 1])
def test_round_trip(seq: int) -> None:
    cursor = encode_cursor(seq)
    assert cursor is not None
    assert "=" not in cursor
    assert decode_cursor(cursor) == seq


@pytest.mark.parametrize("name", ["a", "order.created", "acme/billing/invoice.paid", "ü" * 40])
def test_name_round_trip(name: str) -> None:
    cursor = encode_cursor(name)
    assert cursor is not None
    assert "=" not in cursor
    assert decode_name_cursor(cursor) == name


def test_no_cursor_means_the_first_page() -> None:
    assert encode_cursor(None) is None
    assert decode_cursor(None) is None
    assert decode_cursor("") is None
    assert decode_name_cursor(None) is None
    assert decode_name_cursor("") is None


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("!!!!", id="not-base64"),
        pytest.param("abc", id="binary-after-decoding"),
        pytest.param(b64("abc"), id="not-a-number"),
        pytest.param(b64("-1"), id="negative"),
        pytest.param(b64("1.5"), id="fraction"),
        pytest.param(b64(" 1"), id="whitespace"),
        pytest.param(b64("1" * 20), id="beyond-int64"),
        pytest.param("é", id="non-ascii"),
        pytest.param("a", id="truncated"),
        pytest.param("MT!A", id="not-in-the-alphabet"),
        pytest.param(b64("١"), id="non-ascii-digit"),
    ],
)
def test_garbage_is_a_validation_error(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        decode_cursor(cursor)
    assert caught.value.status == 422
    assert [e.loc for e in caught.value.errors] == ["query:cursor"]


@pytest.mark.parametrize("cursor", ["%%%", "a", "!!!!", "_-8", base64.b64encode(b"\xff").decode()])
def test_name_garbage_is_a_validation_error(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        decode_name_cursor(cursor)
    assert [e.loc for e in caught.value.errors] == ["query:cursor"]
