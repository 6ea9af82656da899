"""Console sign-in: sessions kept in the database, so any API process serves them.

The browser holds a random session ID; the database holds its SHA-256, the ID
of the token that signed in, and the session's CSRF token. A session ends at
its expiry, at sign-out, or as soon as its token is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.domain import portal
from app.domain.tenants import DEFAULT_TENANT
from app.domain.tokens import Scope
from app.errors import Forbidden
from app.services.auth import BOOTSTRAP_ID, Authenticator
from app.store import console_sessions as store
from app.store.database import Database

SESSION_LIFETIME = timedelta(hours=12)
PORTAL_TOKEN_ID = "portal"  # a portal session's token: none, the signed link let it in
PORTAL_KEY = "portal-links"


@dataclass(frozen=True, slots=True)
class NewSession:
    session_id: str  # for the cookie; never stored
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    token_id: str
    csrf_token: str
    tenant_id: str | None  # the tenant chosen (a global admin) or granted (a portal)
    portal: bool
    expires_at: datetime
    token_tenant_id: str | None = None  # a tenant token's own tenant

    @property
    def is_global(self) -> bool:
        """A global admin: may switch tenants and manage tenants."""
        return not self.portal and self.token_tenant_id is None

    @property
    def tenant(self) -> str:
        """The tenant the session acts on: a confined token's own, a portal's,
        else the one a global admin chose (``default`` first)."""
        return self.token_tenant_id or self.tenant_id or DEFAULT_TENANT


class ConsoleSessions:
    def __init__(self, db: Database, auth: Authenticator, *, bootstrap_token: bool) -> None:
        self._db = db
        self._auth = auth
        self._bootstrap = bootstrap_token
        self._key: bytes | None = None

    async def sign_in(self, token: str) -> NewSession:
        """A new session for an admin ``token``; raises Unauthorized or Forbidden."""
        record = await self._auth.authenticate(f"Bearer {token.strip()}", Scope.INGEST)
        if record.scope is not Scope.ADMIN:
            raise Forbidden("an ingest token cannot sign in to the console: use an admin token")
        return await self._create(record.id, tenant_id=None, portal=False)

    async def portal_link(self, tenant_id: str, expires_in: int) -> tuple[dict[str, str], datetime]:
        """The query of a signed link into ``tenant_id``'s portal, and its expiry."""
        expires_at = (datetime.now(UTC) + timedelta(seconds=expires_in)).replace(microsecond=0)
        return portal.link_params(await self._portal_key(), tenant_id, expires_at), expires_at

    async def open_portal(
        self, tenant: str | None, expires: str | None, sig: str | None
    ) -> tuple[NewSession, str]:
        """A session confined to the link's tenant until the link expires, and
        that tenant; raises Forbidden for a tampered, forged or expired link."""
        try:
            grant = portal.verify(await self._portal_key(), tenant, expires, sig, datetime.now(UTC))
        except portal.InvalidLink as exc:
            raise Forbidden(str(exc)) from None
        new = await self._create(
            PORTAL_TOKEN_ID, tenant_id=grant.tenant_id, portal=True, until=grant.expires_at
        )
        return new, grant.tenant_id

    async def _portal_key(self) -> bytes:
        if self._key is None:
            stored = await store.key(
                self._db, PORTAL_KEY, secrets.token_urlsafe(48), datetime.now(UTC)
            )
            self._key = stored.encode()
        return self._key

    async def _create(
        self,
        token_id: str,
        *,
        tenant_id: str | None,
        portal: bool,
        until: datetime | None = None,
    ) -> NewSession:
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires_at = until or now + SESSION_LIFETIME
        async with self._db.write() as conn:
            await store.prune(conn, now)
            await store.create(
                conn,
                id_hash=_digest(session_id),
                token_id=token_id,
                csrf_token=secrets.token_urlsafe(32),
                tenant_id=tenant_id,
                portal=portal,
                now=now,
                expires_at=expires_at,
            )
        return NewSession(session_id, expires_at)

    async def resolve(self, session_id: str | None) -> Session | None:
        """The live session this cookie names, or None (unknown, expired, token revoked)."""
        if not session_id or len(session_id) > 128:
            return None
        found = await store.find(self._db, _digest(session_id), datetime.now(UTC))
        if found is None:
            return None
        active = (
            found.scope is Scope.ADMIN
            or (found.token_id == BOOTSTRAP_ID and self._bootstrap)
            or (found.portal and found.token_id == PORTAL_TOKEN_ID)
        )
        if not active:
            return None
        return Session(
            found.token_id,
            found.csrf_token,
            found.tenant_id,
            found.portal,
            found.expires_at,
            found.token_tenant_id,
        )

    async def choose_tenant(self, session_id: str, tenant_id: str) -> None:
        """A global admin's session now acts on ``tenant_id``."""
        async with self._db.write() as conn:
            await store.set_tenant(conn, _digest(session_id), tenant_id)

    async def sign_out(self, session_id: str) -> None:
        async with self._db.write() as conn:
            await store.remove(conn, _digest(session_id))


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
