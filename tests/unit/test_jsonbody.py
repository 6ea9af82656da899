"""Strict JSON for request bodies: 400 for what is not JSON, 422 for what cannot be stored.

``parse`` has a fast path and a slow one (taken when the body holds a ``\\u0000``
or surrogate escape), so most cases run through both: ``SLOW`` is an array
element whose *text* contains ``\\u0000`` but whose value is harmless.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from app.domain import jsonbody
from app.errors import BadRequest, ValidationFailed

# The JSON text "\\u0000": an escaped backslash then "u0000", i.e. plain text.
SLOW = b'"\\\\u0000"'


def both_paths(value: bytes) -> list[bytes]:
    return [b"[" + value + b"]", b"[" + value + b", " + SLOW + b"]"]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


NOT_JSON = {
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus-infinity": b"-Infinity",
    "nan-in-object": b'{"x": NaN}',
    "beyond-double": b"1e400",
    "beyond-double-negative": b"-1e400",
    "beyond-double-long-mantissa": b"17976931348623159" + b"0" * 292 + b".0",
    "invalid-utf8": b'"\xff"',
    "truncated-utf8": b'"\xe2\x82"',
    "deeply-nested": nested(5000),
    "trailing-garbage": b"{} x",
    "single-quotes": b"'x'",
}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b, id=f"{name}-{path}")
        for name, v in NOT_JSON.items()
        for path, b in zip(("fast", "slow"), both_paths(v), strict=True)
    ],
)
def test_not_json_is_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        jsonbody.parse(body)
    assert caught.value.status == 400


@pytest.mark.parametrize("body", [b"", b"   ", b"{", b'{"a": 1,}'])
def test_malformed_is_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        jsonbody.parse(body)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        pytest.param(b'"\\u0000"', ["/"], id="top-level-nul"),
        pytest.param(b'{"a": "x\\u0000y"}', ["/a"], id="nul-in-value"),
        pytest.param(b'{"a": ["ok", "\\ud800"]}', ["/a/1"], id="lone-high-surrogate-in-array"),
        pytest.param(b'{"a": [{"b": "\\udc00"}]}', ["/a/0/b"], id="lone-low-surrogate"),
        pytest.param(b'{"a": "\\ude00\\ud83d"}', ["/a"], id="pair-in-wrong-order"),
        pytest.param(b'{"a/b": {"c~d": "\\u0000"}}', ["/a~1b/c~0d"], id="pointer-escaping"),
        pytest.param(b'{"~/": "\\uD800"}', ["/~0~1"], id="pointer-escaping-key-only-specials"),
        pytest.param(
            b'{"a": "\\u0000", "b": [1, "\\ud800"]}', ["/a", "/b/1"], id="every-problem-named"
        ),
    ],
)
def test_unstorable_strings_are_named_by_pointer(body: bytes, errors: list[str]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        jsonbody.parse(body)
    assert caught.value.status == 422
    assert [e.loc for e in caught.value.errors] == errors


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"k\\u0000": 1}', "/k\x00"),
        (b'[{"ok": {"\\ud800x": "v"}}]', "/0/ok/\ud800x"),
    ],
)
def test_unstorable_object_keys_are_rejected(body: bytes, loc: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        jsonbody.parse(body)
    (error,) = caught.value.errors
    assert error.loc == loc
    assert error.msg.startswith("object key")


def test_lone_surrogate_in_key_and_value_both_reported() -> None:
    with pytest.raises(ValidationFailed) as caught:
        jsonbody.parse(b'{"\\ud800": "\\u0000"}')
    assert [e.loc for e in caught.value.errors] == ["/\ud800", "/\ud800"]


@pytest.mark.parametrize(
    ("body", "value"),
    [
        pytest.param(b'{"e": "\\ud83d\\ude00"}', {"e": "\U0001f600"}, id="emoji-pair"),
        pytest.param(b'{"e": "\\uD83D\\uDE00"}', {"e": "\U0001f600"}, id="emoji-pair-upper-hex"),
        pytest.param(b'{"\\ud83d\\ude00": 1}', {"\U0001f600": 1}, id="emoji-pair-in-key"),
        pytest.param(b'{"t": "\\\\u0000"}', {"t": "\\u0000"}, id="escaped-backslash-nul-text"),
        pytest.param(b'{"t": "\\\\ud800"}', {"t": "\\ud800"}, id="escaped-backslash-surrogate"),
        pytest.param(b'{"t": "\\u0001"}', {"t": "\x01"}, id="other-control-escape"),
        pytest.param('{"t": "caf\u00e9 \u4e2d"}'.encode(), {"t": "caf\u00e9 \u4e2d"}, id="utf8"),
        pytest.param(b"1.7976931348623157e308", 1.7976931348623157e308, id="max-double"),
        pytest.param(b"5e-324", 5e-324, id="min-subnormal"),
        pytest.param(b"-9223372036854775808", -(2**63), id="min-int64"),
    ],
)
def test_storable_json_is_accepted(body: bytes, value: object) -> None:
    assert jsonbody.parse(body) == value


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b, id=f"{name}-{path}")
        for name, v in {
            "beyond-int64": str(2**70).encode(),
            "beyond-uint64-not-power-of-two": str(10**25 + 1).encode(),
            "nested-300": nested(300),
            "nested-1000": nested(1000),
        }.items()
        for path, b in zip(("fast", "slow"), both_paths(v), strict=True)
    ],
)
def test_whatever_parse_accepts_can_be_stored(body: bytes) -> None:
    """The store serialises with ``jsonbody.dumps``: an accepted body must survive it.

    Either answer is allowed by the contract (accept, or 400 as not storable
    JSON); what is not allowed is accepting a value that later fails to
    serialise, which surfaces as a 500.
    """
    try:
        document = jsonbody.parse(body)
    except BadRequest:
        return
    assert orjson.loads(jsonbody.dumps(document)) == document


@pytest.mark.parametrize("number", [str(2**70), str(10**25 + 1), "123456789012345678901"])
def test_a_number_means_the_same_on_both_paths(number: str) -> None:
    fast, slow = (jsonbody.parse(body)[0] for body in both_paths(number.encode()))
    assert (type(fast), fast) == (type(slow), slow)


def _objects(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize("make", [nested, _objects], ids=["arrays", "objects"])
def test_depth_limit_is_the_same_on_both_sides_of_the_shortcut(
    make: Callable[[int], bytes],
) -> None:
    """Short bodies and bodies with few brackets skip the depth check; the limit
    must not move (250 arrays fit in 500 bytes, 250 objects do not)."""
    assert jsonbody.parse(make(250)) is not None  # 250 brackets: skipped, and fine
    jsonbody.parse(make(251))  # checked, and fine: 251 levels still fit in an answer
    with pytest.raises(BadRequest, match="nested too deeply"):
        jsonbody.parse(make(252))


def test_brackets_inside_strings_only_cost_the_check() -> None:
    body = orjson.dumps({"text": "[{" * 300})
    assert jsonbody.parse(body) == {"text": "[{" * 300}
