"""The Authenticator's cache of recent tokens (by the Authorization header as sent)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.domain.tokens import Scope
from app.errors import Forbidden, Unauthorized
from app.services import auth as auth_module
from app.services import fresh_cache
from app.services.auth import Authenticator
from app.store import tokens as token_store
from app.store.database import Database


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The digests the Authenticator looked up in the database, in order."""
    seen: list[str] = []
    find = token_store.find_token

    async def counted(db: Database, digest: str) -> token_store.TokenRecord | None:
        seen.append(digest)
        return await find(db, digest)

    monkeypatch.setattr(auth_module.store, "find_token", counted)
    return seen


@pytest.fixture
def no_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No background refresh during the test: the lookups counted are the requests'."""
    monkeypatch.setattr(fresh_cache, "REFRESH_AT", 1_000.0)


async def test_a_header_seen_recently_is_not_looked_up_again(
    db: Database, lookups: list[str], no_refresh: None
) -> None:
    auth = Authenticator(db, None)
    issued = await auth.issue(Scope.INGEST, None)
    header = f"Bearer {issued.token}"
    for _ in range(3):
        assert (await auth.authenticate(header, Scope.INGEST)).id == issued.id
    assert len(lookups) == 1
    # Another spelling of the same token is its own entry, and just as valid.
    assert (await auth.authenticate(f"bearer  {issued.token}", Scope.INGEST)).id == issued.id
    assert len(lookups) == 2
    with pytest.raises(Forbidden):  # the scope is checked on every hit
        await auth.authenticate(header, Scope.ADMIN)


async def test_revoking_forgets_every_cached_header(db: Database, lookups: list[str]) -> None:
    auth = Authenticator(db, None)
    issued = await auth.issue(Scope.INGEST, None)
    headers = [f"Bearer {issued.token}", f"bearer {issued.token}"]
    for header in headers:
        await auth.authenticate(header, Scope.INGEST)
    await auth.revoke(issued.id)
    for header in headers:
        with pytest.raises(Unauthorized):
            await auth.authenticate(header, Scope.INGEST)


async def test_unknown_tokens_are_remembered_too_and_malformed_headers_never(
    db: Database, lookups: list[str], no_refresh: None
) -> None:
    auth = Authenticator(db, None)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await auth.authenticate("Bearer er_not_a_token", Scope.INGEST)
    assert len(lookups) == 1
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await auth.authenticate("Basic ZXI6eA==", Scope.INGEST)
    assert len(lookups) == 1
    assert "Basic ZXI6eA==" not in auth._cache


async def test_the_bootstrap_token_is_checked_every_time_and_never_cached(
    db: Database, lookups: list[str]
) -> None:
    auth = Authenticator(db, "the-bootstrap-token")
    for _ in range(2):
        record = await auth.authenticate("Bearer the-bootstrap-token", Scope.ADMIN)
        assert record.id == auth_module.BOOTSTRAP_ID
    assert lookups == []
    assert len(auth._cache) == 0


async def test_overlong_headers_are_checked_but_not_remembered(
    db: Database, lookups: list[str]
) -> None:
    auth = Authenticator(db, None)
    header = "Bearer " + "x" * auth_module.MAX_CACHED_HEADER
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await auth.authenticate(header, Scope.INGEST)
    assert len(lookups) == 2
    assert len(auth._cache) == 0


async def test_a_header_in_use_is_looked_up_again_before_its_entry_expires(
    db: Database, lookups: list[str]
) -> None:
    auth = Authenticator(db, None)
    issued = await auth.issue(Scope.INGEST, None)
    header = f"Bearer {issued.token}"
    loop = asyncio.get_running_loop()
    await auth.authenticate(header, Scope.INGEST)
    used = loop.time()
    await _until(lambda: len(lookups) == 2)  # in the background
    assert loop.time() - used < auth_module.CACHE_SECONDS
    await auth.authenticate(header, Scope.INGEST)
    assert len(lookups) == 2
    await auth.close()


async def test_a_revocation_elsewhere_takes_effect_within_the_cache_time_for_a_header_in_use(
    db: Database,
) -> None:
    here, elsewhere = Authenticator(db, None), Authenticator(db, None)
    issued = await elsewhere.issue(Scope.INGEST, None)
    header = f"Bearer {issued.token}"
    await here.authenticate(header, Scope.INGEST)
    await asyncio.sleep(0.4)  # some way into the entry's life, with refreshes under way
    loop = asyncio.get_running_loop()
    revoked = loop.time()
    await elsewhere.revoke(issued.id)
    committed = loop.time()
    while True:  # a client sending all along keeps the entry refreshed
        asked = loop.time()
        try:
            await here.authenticate(header, Scope.INGEST)
        except Unauthorized:
            break
        assert asked - committed < auth_module.CACHE_SECONDS, "served past its bound"
        await asyncio.sleep(0.02)
    assert loop.time() - revoked <= auth_module.CACHE_SECONDS + 0.5
    await here.close()


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
