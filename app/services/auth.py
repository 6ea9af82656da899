"""Bearer-token authentication, token issuing and the first-start admin token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from app.domain.ids import new_id
from app.domain.tokens import Scope, generate_token, hash_token, scope_allows
from app.errors import Forbidden, NotFound, Unauthorized
from app.services.fresh_cache import FreshCache
from app.store import tokens as store
from app.store.database import Database
from app.store.tokens import TokenInfo, TokenRecord

__all__ = ["Authenticator", "IssuedToken", "TokenInfo", "TokenRecord", "ensure_admin_token"]

# Token lookups are cached briefly: a revocation is immediate in the process
# that served it and takes at most this long in the others. Headers in use are
# looked up again in the background before their entry expires (FreshCache).
CACHE_SECONDS = 1.0
# A token makes a 53-character header; longer ones are checked all the same but
# not remembered, so the cache stays as small as when it held digests.
MAX_CACHED_HEADER = 128
BOOTSTRAP_ID = "tok_bootstrap"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    token: str
    scope: Scope
    tenant_id: str | None = None


class Authenticator:
    def __init__(self, db: Database, bootstrap_token: str | None) -> None:
        self._db = db
        self._bootstrap_hash = hash_token(bootstrap_token) if bootstrap_token else None
        self._cache: FreshCache[str, TokenRecord | None] = FreshCache(
            self._lookup, seconds=CACHE_SECONDS
        )

    async def authenticate(self, authorization: str | None, required: Scope) -> TokenRecord:
        record = await self._record(authorization)
        if record is None:
            raise Unauthorized("the bearer token is not valid")
        if not scope_allows(record.scope, required):
            raise Forbidden(f"a token with scope {record.scope.value!r} cannot make this call")
        return record

    async def _record(self, authorization: str | None) -> TokenRecord | None:
        # Cached by the header as sent: a client sends the same one on every
        # request, and a hit then costs neither parsing nor hashing. Only
        # well-formed headers get in (_bearer raises for the others), and
        # never the bootstrap token.
        cacheable = (
            authorization if authorization and len(authorization) <= MAX_CACHED_HEADER else None
        )
        cached = self._cache.hit(cacheable) if cacheable else None
        if cached is not None:
            return cached.value
        digest = hash_token(_bearer(authorization))
        if self._bootstrap_hash is not None and hmac.compare_digest(digest, self._bootstrap_hash):
            return TokenRecord(BOOTSTRAP_ID, Scope.ADMIN)
        if cacheable is None:
            return await store.find_token(self._db, digest)
        return await self._cache.get(cacheable)

    async def _lookup(self, authorization: str) -> TokenRecord | None:
        return await store.find_token(self._db, hash_token(_bearer(authorization)))

    async def issue(
        self, scope: Scope, description: str | None, tenant_id: str | None = None
    ) -> IssuedToken:
        """A new token; with ``tenant_id`` (an existing tenant, checked by the
        caller) confined to that tenant, else global."""
        token = generate_token()
        token_id = new_id("tok")
        await store.create_token(
            self._db,
            token_id=token_id,
            token_hash=hash_token(token),
            scope=scope,
            description=description,
            now=datetime.now(UTC),
            tenant_id=tenant_id,
        )
        return IssuedToken(token_id, token, scope, tenant_id)

    async def list_page(
        self, *, tenant_id: str | None, after_id: str | None, limit: int
    ) -> tuple[list[TokenInfo], str | None]:
        """Active tokens by ID (only ``tenant_id``'s when given), and the ID to
        continue after (None on the last page)."""
        return await store.list_active(
            self._db, tenant_id=tenant_id, after_id=after_id, limit=limit
        )

    async def revoke(self, token_id: str, tenant_id: str | None = None) -> None:
        """Revoke a token; with ``tenant_id``, only one of that tenant's (any
        other is 404, as if it did not exist)."""
        if not await store.revoke_token(self._db, token_id, datetime.now(UTC), tenant_id):
            raise NotFound(f"no active token {token_id}")
        self.forget()

    async def close(self) -> None:
        """Stop refreshing cached tokens (at shutdown)."""
        await self._cache.close()

    def forget(self) -> None:
        """Drop every cached lookup (after revocations)."""
        self._cache.forget()


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("an Authorization: Bearer token is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token


async def ensure_admin_token(db: Database, bootstrap_token: str | None) -> str | None:
    """On a first start with no token at all, create an admin token and return it."""
    if bootstrap_token or await store.count_active_tokens(db) > 0:
        return None
    issued = await Authenticator(db, None).issue(Scope.ADMIN, "generated on first start")
    return issued.token
