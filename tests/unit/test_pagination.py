"""List cursors: opaque, round-trip, and a 422 for anything this API did not issue."""

from __future__ import annotations

import base64

import pytest

from app.api.pagination import decode_cursor, encode_cursor
from app.errors import ValidationFailed


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("seq", [0, 1, 7, 1234567, 2**31, 2**63 - 1])
def test_round_trip(seq: int) -> None:
    cursor = encode_cursor(seq)
    assert cursor is not None
    assert "=" not in cursor
    assert decode_cursor(cursor) == seq


def test_no_cursor_means_the_first_page() -> None:
    assert encode_cursor(None) is None
    assert decode_cursor(None) is None
    assert decode_cursor("") is None


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
    ],
)
def test_garbage_is_a_validation_error(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        decode_cursor(cursor)
    assert caught.value.status == 422
    assert [e.loc for e in caught.value.errors] == ["query:cursor"]
