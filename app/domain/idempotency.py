"""Idempotency-Key parsing and request fingerprints (IETF draft -06)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from app.errors import BadRequest

MAX_KEY_LENGTH = 255


def parse_key(raw: str) -> str:
    """The key a header value names; the quoted sf-string and bare forms agree.

    ``"abc"`` and ``abc`` are the same key. Raises :class:`BadRequest` when the
    value is empty, longer than 255 characters, or a malformed sf-string.
    """
    value = raw.strip(" \t")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = _unquote_sf_string(value[1:-1])
    elif value.startswith('"'):
        raise BadRequest("Idempotency-Key: unterminated quoted string")
    if not value:
        raise BadRequest("Idempotency-Key must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
    if not value.isprintable() or not value.isascii():
        raise BadRequest("Idempotency-Key must be printable ASCII")
    return value


def _unquote_sf_string(inner: str) -> str:
    # RFC 8941 sf-string: only \" and \\ are escapes; a bare quote ends the string.
    out: list[str] = []
    chars = iter(inner)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            if nxt not in ('"', "\\"):
                raise BadRequest("Idempotency-Key: invalid escape in quoted string")
            out.append(nxt)
        elif char == '"':
            raise BadRequest("Idempotency-Key: unescaped quote in quoted string")
        else:
            out.append(char)
    return "".join(out)


def fingerprint(document: Any) -> str:
    """A stable digest of a request's meaning: key order and whitespace do not count."""
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
