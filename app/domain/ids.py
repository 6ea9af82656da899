"""Prefixed, time-sortable identifiers (``evt_01JD…``).

The 26 characters after the prefix are a ULID: 48 bits of Unix milliseconds and
80 random bits in Crockford base32, so string order is creation order to the
millisecond. Order *between* processes is never taken from IDs; the store keeps
a sequence for that.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# The time: two characters (ten bits) a lookup, five lookups for 50 bits.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_TIME_SHIFTS = (40, 30, 20, 10, 0)
# The randomness: one character from the low five bits of each random byte, so
# sixteen bytes make the 80 random bits in one bytes.translate.
_RANDOM_CHARACTER = bytes(ord(_ALPHABET[byte & 31]) for byte in range(256))
_LENGTH = 26
PREFIXES = frozenset({"evt", "sub", "dlv", "tok", "att", "ten"})


def new_id(prefix: str, now_ms: int | None = None) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return f"{prefix}_{_time_characters(ms)}{os.urandom(16).translate(_RANDOM_CHARACTER).decode()}"


@lru_cache(maxsize=1)
def _time_characters(ms: int) -> str:
    # IDs minted in the same millisecond (a flush's deliveries) share these.
    return "".join([_PAIRS[(ms >> shift) & 1023] for shift in _TIME_SHIFTS])


def id_timestamp_ms(identifier: str) -> int:
    """The creation time encoded in an ID, in Unix milliseconds."""
    _, _, body = identifier.partition("_")
    if len(body) != _LENGTH:
        raise ValueError("not an eventrelay id")
    value = 0
    for char in body:
        value = (value << 5) | _ALPHABET.index(char)
    return value >> 80


def looks_like_id(identifier: str, prefix: str) -> bool:
    head, sep, body = identifier.partition("_")
    return (
        head == prefix and sep == "_" and len(body) == _LENGTH and all(c in _ALPHABET for c in body)
    )
