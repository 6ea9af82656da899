"""Opaque list cursors: the unpadded URL-safe base64 of where the last page
ended, a sequence number (events, dead letters) or a name (event types)."""

from __future__ import annotations

import base64
import binascii

from app.errors import FieldError, ValidationFailed

MAX_SEQ_DIGITS = 19  # a BIGINT


def encode_cursor(last: int | str | None) -> str | None:
    if last is None:
        return None
    return base64.urlsafe_b64encode(str(last).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The sequence number a cursor continues after (None: the first page)."""
    text = decode_name_cursor(cursor)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_SEQ_DIGITS):
        raise _invalid()
    return int(text)


def decode_name_cursor(cursor: str | None) -> str | None:
    """The name a cursor continues after (None: the first page)."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        if not raw:
            raise ValueError(cursor)
        return raw.decode("utf-8")
    except (ValueError, UnicodeError, binascii.Error):
        raise _invalid() from None


def _invalid() -> ValidationFailed:
    return ValidationFailed(
        "the cursor is not one this API returned", [FieldError("query:cursor", "invalid cursor")]
    )
