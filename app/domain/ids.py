"""Prefixed, time-sortable identifiers (``evt_01JD…``).

The 26 characters after the prefix are a ULID: 48 bits of Unix milliseconds and
80 random bits in Crockford base32, so string order is creation order to the
millisecond. Order *between* processes is never taken from IDs; the store keeps
a sequence for that.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters (ten bits) at a time: 13 lookups make the 26 characters.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_PAIR_SHIFTS = tuple(range(120, -1, -10))
_LENGTH = 26
PREFIXES = frozenset({"evt", "sub", "dlv", "tok", "att"})


def new_id(prefix: str, now_ms: int | None = None) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    pairs = _PAIRS
    return f"{prefix}_{''.join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])}"


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
