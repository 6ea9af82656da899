"""Prefixed, time-sortable identifiers (``evt_01JD…``).

The 26 characters after the prefix are a ULID: 48 bits of Unix milliseconds and
80 random bits in Crockford base32, so string order is creation order to the
millisecond. Order *between* processes is never taken from IDs; the store keeps
a sequence for that.
"""

from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# base64's base32 writes RFC 4648's alphabet; this table turns it into Crockford's.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
_LENGTH = 26
PREFIXES = frozenset({"evt", "sub", "dlv", "tok", "att"})


def new_id(prefix: str, now_ms: int | None = None) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    # The 130 bits of 26 characters (two leading zeros, then the 128-bit value),
    # placed at the top of 160 bits so base32 encodes them first.
    encoded = base64.b32encode((value << 30).to_bytes(20, "big"))[:_LENGTH]
    return f"{prefix}_{encoded.translate(_TO_CROCKFORD).decode()}"


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
