"""Secrets at rest: AES-256-GCM under the keys of ``EVENTRELAY_ENCRYPTION_KEYS``.

A sealed value is text: ``enc:v1:<key id>:<base64url of nonce + ciphertext + tag>``.

- ``v1`` is the format: AES-256-GCM (the ``cryptography`` package), a random
  96-bit nonce per value, the 128-bit tag.
- The key ID is the first 8 hex digits of a SHA-256 of the key, so a value
  names the key that opens it without saying anything useful about the key.
- The associated data binds the value to where it is stored (table, column,
  row): a ciphertext copied into another row or column does not open.

The first key seals; every key opens, so keys can be rotated. With no keys a
value is stored as it is, and a value that is not sealed (written before keys
were set) opens as itself. Pure: the store decides which columns are sealed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import SecretUnavailable

SETTING = "EVENTRELAY_ENCRYPTION_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEALED_PREFIX = "enc:"
VERSION = "v1"
_V1 = f"{SEALED_PREFIX}{VERSION}:"


def key_id(key: bytes) -> str:
    """A short, stable name for ``key`` (8 hex digits)."""
    return hashlib.sha256(b"eventrelay key id\x00" + key).hexdigest()[:8]


def parse_keys(text: str) -> tuple[bytes, ...]:
    """The keys of the setting: comma-separated, each base64 of exactly 32 bytes.

    The ValueError names the setting and the key's position, never the key.
    """
    parts = [p.strip() for p in text.split(",")]
    if parts == [""]:
        return ()
    keys = []
    for n, part in enumerate(parts, 1):
        where = f"{SETTING}: key {n} of {len(parts)}"
        if not part:
            raise ValueError(f"{where} is empty")
        try:
            key = base64.b64decode(part.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"{where} is not base64 (generate one with `openssl rand -base64 32`)"
            ) from None
        if len(key) != KEY_BYTES:
            raise ValueError(f"{where} decodes to {len(key)} bytes; a key is exactly {KEY_BYTES}")
        keys.append(key)
    ids = [key_id(k) for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{SETTING}: the same key is listed twice")
    return tuple(keys)


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def sealing_key_id(stored: str) -> str | None:
    """The ID of the key a sealed value names (None: plaintext, or not readable)."""
    if not stored.startswith(_V1):
        return None
    return stored[len(_V1) :].partition(":")[0]


class Keyring:
    """The configured keys: the first seals, all open. No keys: values are
    stored as they are."""

    __slots__ = ("_aead", "current")

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        if any(len(k) != KEY_BYTES for k in keys):
            raise ValueError(f"an encryption key is exactly {KEY_BYTES} bytes")
        self._aead = {key_id(k): AESGCM(k) for k in keys}
        self.current: str | None = key_id(keys[0]) if keys else None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._aead)

    def seal(self, plaintext: str, aad: bytes) -> str:
        """``plaintext`` sealed with the first key (as it is, without keys)."""
        if self.current is None:
            return plaintext
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current].encrypt(nonce, plaintext.encode(), aad)
        return f"{_V1}{self.current}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, stored: str, aad: bytes, what: str) -> str:
        """The plaintext of ``stored`` (``what`` names it in errors).

        Raises SecretUnavailable when it is sealed with a key not configured,
        does not authenticate, or is not a sealed value at all.
        """
        if not is_sealed(stored):
            return stored
        kid, blob = _split(stored, what)
        aead = self._aead.get(kid)
        if aead is None:
            raise SecretUnavailable(
                f"{what} is encrypted with key {kid}, which {SETTING} does not hold"
                f" (configured: {', '.join(self._aead) or 'none'})"
            )
        try:
            plaintext = aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise SecretUnavailable(
                f"{what} does not decrypt with key {kid}: it was altered or copied from"
                " another row or column"
            ) from None
        return plaintext.decode()

    def is_current(self, stored: str) -> bool:
        """Whether ``stored`` is as this keyring would write it now: sealed with
        the first key, or plaintext while there are no keys."""
        if self.current is None:
            return not is_sealed(stored)
        return stored.startswith(f"{_V1}{self.current}:")


def _split(stored: str, what: str) -> tuple[str, bytes]:
    """The key ID and the nonce + ciphertext + tag of a sealed value."""
    if not stored.startswith(_V1):
        raise SecretUnavailable(f"{what} is sealed in a format this version cannot read")
    kid, _, encoded = stored[len(_V1) :].partition(":")
    try:
        blob = base64.urlsafe_b64decode(encoded)
    except (binascii.Error, ValueError):
        blob = b""
    if len(kid) != 8 or len(blob) < NONCE_BYTES + TAG_BYTES:
        raise SecretUnavailable(f"{what} is not a sealed value eventrelay wrote")
    return kid, blob
