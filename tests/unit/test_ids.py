"""Prefixed, time-sortable IDs: shape, order, the embedded timestamp."""

from __future__ import annotations

import random
import time

import pytest

from app.domain import ids
from app.domain.ids import PREFIXES, id_timestamp_ms, looks_like_id, new_id

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_shape(prefix: str) -> None:
    identifier = new_id(prefix)
    head, sep, body = identifier.partition("_")
    assert (head, sep) == (prefix, "_")
    assert len(body) == 26
    assert set(body) <= CROCKFORD
    assert looks_like_id(identifier, prefix)


def test_the_public_prefixes_exist() -> None:
    assert {"evt", "sub", "dlv", "tok"} <= PREFIXES


def test_ids_are_unique_within_one_millisecond() -> None:
    ids = {new_id("evt", now_ms=1_700_000_000_000) for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize(
    ("earlier", "later"),
    [(0, 1), (1_700_000_000_000, 1_700_000_000_001), (2**40 - 1, 2**40), (2**48 - 2, 2**48 - 1)],
)
def test_string_order_follows_milliseconds(earlier: int, later: int) -> None:
    # Many draws: the random tail must never outweigh a one-millisecond difference.
    for _ in range(200):
        assert new_id("evt", now_ms=earlier) < new_id("evt", now_ms=later)


def test_ids_minted_over_time_sort_in_creation_order() -> None:
    minted = [new_id("evt", now_ms=ms) for ms in range(1_700_000_000_000, 1_700_000_000_050)]
    assert sorted(minted) == minted


@pytest.mark.parametrize("ms", [0, 1, 1_700_000_000_123, 2**48 - 1])
def test_timestamp_round_trip(ms: int) -> None:
    assert id_timestamp_ms(new_id("dlv", now_ms=ms)) == ms


def test_timestamp_defaults_to_now() -> None:
    before = time.time_ns() // 1_000_000
    identifier = new_id("evt")
    after = time.time_ns() // 1_000_000
    assert before <= id_timestamp_ms(identifier) <= after


@pytest.mark.parametrize("prefix", ["", "evt_", "EVT", "xyz", "event"])
def test_unknown_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="unknown id prefix"):
        new_id(prefix)


@pytest.mark.parametrize("garbage", ["evt_", "evt_123", "nounderscore", "evt_" + "0" * 27])
def test_timestamp_of_wrong_length_is_rejected(garbage: str) -> None:
    with pytest.raises(ValueError, match="not an eventrelay id"):
        id_timestamp_ms(garbage)


def test_timestamp_of_non_crockford_characters_is_rejected() -> None:
    # Only the exception class is the contract; its wording comes from str.index.
    with pytest.raises(ValueError):  # noqa: PT011
        id_timestamp_ms("evt_" + "U" * 26)


@pytest.mark.parametrize(
    ("identifier", "prefix"),
    [
        ("sub_01JD0000000000000000000000", "evt"),  # another kind of id
        ("evt01JD0000000000000000000000", "evt"),  # no separator
        ("evt_01JD000000000000000000000", "evt"),  # 25 characters
        ("evt_01JD00000000000000000000000", "evt"),  # 27 characters
        ("evt_01jd0000000000000000000000", "evt"),  # lower case
        ("evt_01JD000000000000000000000U", "evt"),  # U is not Crockford base32
        ("evt_01JD000000000000000000000I", "evt"),  # nor I, L, O
        ("", "evt"),
    ],
)
def test_looks_like_id_rejects(identifier: str, prefix: str) -> None:
    assert not looks_like_id(identifier, prefix)


def test_looks_like_id_accepts_a_well_formed_id() -> None:
    assert looks_like_id("evt_01JD0000000000000000000000", "evt")


def _reference_ulid(ms: int, randomness: bytes) -> str:
    """The ULID spec's encoding, five bits at a time from the least significant end."""
    value = (ms << 80) | int.from_bytes(randomness, "big")
    chars = []
    for _ in range(26):
        chars.append(sorted(CROCKFORD)[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _low_five_bits(drawn: bytes) -> bytes:
    """The 80 random bits new_id takes from 16 random bytes: each byte's low five."""
    value = 0
    for byte in drawn:
        value = (value << 5) | (byte & 31)
    return value.to_bytes(10, "big")


@pytest.mark.parametrize("seed", range(5))
def test_encoding_matches_the_ulid_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    draw = random.Random(seed)
    for _ in range(200):
        ms = draw.randrange(2**48)
        drawn = draw.randbytes(16)
        monkeypatch.setattr(ids.os, "urandom", lambda n, r=drawn: r[:n])
        expected = _reference_ulid(ms, _low_five_bits(drawn))
        assert new_id("evt", now_ms=ms) == f"evt_{expected}"


def test_every_random_character_is_equally_likely() -> None:
    """256 byte values over 32 characters: eight each, so no character is favoured."""
    counts = dict.fromkeys(CROCKFORD, 0)
    for byte in range(256):
        counts[chr(ids._RANDOM_CHARACTER[byte])] += 1
    assert set(counts.values()) == {8}
