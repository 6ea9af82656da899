"""Opaque list cursors: the base64 of the last row's sequence number."""

from __future__ import annotations

import base64
import binascii

from app.errors import FieldError, ValidationFailed


def encode_cursor(seq: int | None) -> str | None:
    if seq is None:
        return None
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        if not text.isdigit() or len(text) > 19:
            raise ValueError(text)
        return int(text)
    except (ValueError, UnicodeError, binascii.Error):
        raise ValidationFailed(
            "the cursor is not one this API returned",
            [FieldError("query:cursor", "invalid cursor")],
        ) from None
