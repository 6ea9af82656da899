"""Standard Webhooks signatures.

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
one entry per valid secret, separated by spaces. Secrets are ``whsec_`` plus the
base64 of the key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret; raises ValueError when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a secret is whsec_ followed by base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


Key = bytes | hmac.HMAC
"""A secret's key bytes, or the same key :func:`prepared` once for many signatures."""


def prepared(key: bytes) -> hmac.HMAC:
    """``key`` keyed once: each signature then copies this state rather than keying
    an HMAC again (OpenSSL's setup per call is about a third of one signature here)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def sign(key: Key, message_id: str, timestamp: int, body: bytes) -> str:
    return _signature(key, b"%s.%d.%s" % (message_id.encode(), timestamp, body))


def signature_header(keys: Sequence[Key], message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,`` entry per key (runs for every delivery attempt: the signed
    bytes are built once, whatever the number of keys)."""
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    if len(keys) == 1:
        return _signature(keys[0], signed)
    return " ".join([_signature(key, signed) for key in keys])


def _signature(key: Key, signed: bytes) -> str:
    if isinstance(key, bytes):
        # hmac.digest: OpenSSL's one-shot HMAC, without an HMAC object per call.
        digest = hmac.digest(key, signed, "sha256")
    else:
        state = key.copy()
        state.update(signed)
        digest = state.digest()
    return "v1," + base64.b64encode(digest).decode()
