"""API tokens: generated with 32 random bytes, stored only as a SHA-256 digest.

The tokens carry 256 bits of entropy, so a fast hash is enough: there is
nothing for a slow KDF to protect against.
"""

from __future__ import annotations

import enum
import hashlib
import secrets

TOKEN_PREFIX = "er_"


class Scope(enum.StrEnum):
    ADMIN = "admin"
    INGEST = "ingest"


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def scope_allows(scope: Scope, required: Scope) -> bool:
    return scope is Scope.ADMIN or scope is required
