"""Console sessions in the database (both backends): what the cookie names, how
a session ends, and that the token never reaches the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.domain.tokens import Scope
from app.errors import Forbidden, Unauthorized
from app.services.auth import BOOTSTRAP_ID, Authenticator
from app.services.console import ConsoleSessions
from app.store import schema
from app.store.database import Database
from tests.conftest import ADMIN_TOKEN


def sessions(db: Database, bootstrap: str | None = None) -> ConsoleSessions:
    return ConsoleSessions(db, Authenticator(db, bootstrap), bootstrap_token=bootstrap is not None)


async def stored_rows(db: Database) -> list[dict[str, object]]:
    async with db.read() as conn:
        rows = await conn.execute(select(schema.console_sessions))
        return [dict(r._mapping) for r in rows]


async def test_an_admin_token_opens_a_session_the_cookie_names_by_a_random_id(db: Database) -> None:
    auth = Authenticator(db, None)
    admin = await auth.issue(Scope.ADMIN, "operator")
    console = sessions(db)
    first = await console.sign_in(admin.token)
    second = await console.sign_in(admin.token)
    assert first.session_id != second.session_id
    assert admin.token not in (first.session_id, second.session_id)

    found = await console.resolve(first.session_id)
    assert found is not None
    assert found.token_id == admin.id
    assert len(found.csrf_token) >= 32
    assert found.expires_at > datetime.now(UTC) + timedelta(hours=11)
    # The table holds digests: neither the session ID nor the token.
    for row in await stored_rows(db):
        assert first.session_id not in row.values()
        assert admin.token not in row.values()


async def test_ingest_and_unknown_tokens_are_refused(db: Database) -> None:
    ingest = await Authenticator(db, None).issue(Scope.INGEST, "producer")
    console = sessions(db)
    with pytest.raises(Forbidden, match="an ingest token cannot sign in"):
        await console.sign_in(ingest.token)
    with pytest.raises(Unauthorized):
        await console.sign_in("er_not_a_token")
    assert await stored_rows(db) == []


async def test_a_session_ends_at_sign_out_at_expiry_and_when_its_token_is_revoked(
    db: Database,
) -> None:
    auth = Authenticator(db, None)
    admin = await auth.issue(Scope.ADMIN, None)
    console = sessions(db)

    signed_out = await console.sign_in(admin.token)
    await console.sign_out(signed_out.session_id)
    assert await console.resolve(signed_out.session_id) is None

    expired = await console.sign_in(admin.token)
    async with db.write() as conn:
        await conn.execute(
            update(schema.console_sessions).values(expires_at=datetime.now(UTC) - timedelta(1))
        )
    assert await console.resolve(expired.session_id) is None

    revoked = await console.sign_in(admin.token)
    assert await console.resolve(revoked.session_id) is not None
    await auth.revoke(admin.id)
    assert await console.resolve(revoked.session_id) is None

    for junk in (None, "", "x" * 500, "not-a-session"):
        assert await console.resolve(junk) is None


async def test_the_configured_admin_token_signs_in_while_it_is_configured(db: Database) -> None:
    console = sessions(db, ADMIN_TOKEN)
    new = await console.sign_in(ADMIN_TOKEN)
    found = await console.resolve(new.session_id)
    assert found is not None
    assert found.token_id == BOOTSTRAP_ID
    # A process started without EVENTRELAY_ADMIN_TOKEN does not honour it.
    assert await sessions(db).resolve(new.session_id) is None


async def test_expired_sessions_are_pruned_at_the_next_sign_in(db: Database) -> None:
    admin = await Authenticator(db, None).issue(Scope.ADMIN, None)
    console = sessions(db)
    await console.sign_in(admin.token)
    async with db.write() as conn:
        await conn.execute(
            update(schema.console_sessions).values(expires_at=datetime.now(UTC) - timedelta(1))
        )
    await console.sign_in(admin.token)
    assert len(await stored_rows(db)) == 1


async def test_a_portal_link_opens_a_session_confined_to_its_tenant_until_it_expires(
    db: Database,
) -> None:
    made_here, checked_elsewhere = sessions(db), sessions(db)  # two processes, one key
    params, expires_at = await made_here.portal_link("acme", 120)
    assert expires_at - datetime.now(UTC) <= timedelta(seconds=120)
    new, tenant = await checked_elsewhere.open_portal(
        params["tenant"], params["expires"], params["sig"]
    )
    assert tenant == "acme"
    found = await made_here.resolve(new.session_id)
    assert found is not None
    assert (found.portal, found.tenant_id, found.expires_at) == (True, "acme", expires_at)

    forged = {**params, "tenant": "globex"}
    for bad in (forged, {**params, "sig": params["sig"][:-2] + "AA"}, {**params, "expires": "1"}):
        with pytest.raises(Forbidden):
            await made_here.open_portal(bad["tenant"], bad["expires"], bad["sig"])

    # The session ends with the link.
    async with db.write() as conn:
        await conn.execute(
            update(schema.console_sessions).values(expires_at=datetime.now(UTC) - timedelta(1))
        )
    assert await made_here.resolve(new.session_id) is None
