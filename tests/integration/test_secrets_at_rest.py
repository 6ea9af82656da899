"""Signing secrets at rest, on both databases (API-v2.md, Destinations: secrets at
rest): sealed with the first of ``EVENTRELAY_ENCRYPTION_KEYS``, opened with any,
bound to their row and column; plaintext rows from before keep working; a value
whose key is gone is a clear 503, never a 500; ``rotate-encryption-key`` moves
everything to the first key, a batch at a time, without losing a concurrent
``rotate-secret``."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretBytes
from sqlalchemy import text

from app.domain.sealing import key_id
from app.main import rotate_encryption_key
from app.settings import Settings
from app.store import subscriptions as subscription_store
from app.store.database import open_database
from tests.integration.support import assert_problem, running

PUBLIC_URL = "http://8.8.8.8/hooks"


def new_key() -> bytes:
    return os.urandom(32)


def with_keys(settings: Settings, *keys: bytes) -> Settings:
    return settings.model_copy(update={"encryption_keys": tuple(SecretBytes(k) for k in keys)})


@asynccontextmanager
async def api(settings: Settings, *keys: bytes) -> AsyncIterator[httpx.AsyncClient]:
    async with running(with_keys(settings, *keys)) as client:
        yield client


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/subscriptions", json={"url": PUBLIC_URL, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def shown_secret(client: httpx.AsyncClient, subscription_id: str) -> str:
    response = await client.get(f"/v1/subscriptions/{subscription_id}/secret")
    assert response.status_code == 200, response.text
    return str(response.json()["secret"])


async def rotate(client: httpx.AsyncClient, subscription_id: str) -> str:
    response = await client.post(f"/v1/subscriptions/{subscription_id}/rotate-secret")
    assert response.status_code == 200, response.text
    return str(response.json()["secret"])


async def stored_rows(database_url: str) -> list[dict[str, Any]]:
    """Every subscription row as the database holds it (raw SQL, no store code)."""
    db = open_database(database_url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(text("SELECT * FROM subscriptions ORDER BY id"))
            return [dict(r._mapping) for r in rows]
    finally:
        await db.dispose()


async def raw_update(database_url: str, sql: str, **params: Any) -> None:
    db = open_database(database_url)
    try:
        async with db.write() as conn:
            await conn.execute(text(sql), params)
    finally:
        await db.dispose()


def database_files(database_url: str) -> bytes:
    """SQLite: the bytes of the database file and its WAL, as on disk."""
    path = Path(database_url.split("///", 1)[1])
    return b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )


def sealed_with(value: str, key: bytes) -> bool:
    return value.startswith(f"enc:v1:{key_id(key)}:")


async def test_no_plaintext_secret_reaches_the_database(
    settings: Settings, database_url: str, backend: str
) -> None:
    key = new_key()
    shown: list[str] = []
    async with api(settings, key) as client:
        subs = [await create(client, description=f"sub {n}") for n in range(3)]
        subs.append(await create(client, secret="whsec_" + "QUFB" * 11))  # supplied by the client
        shown += [s["secret"] for s in subs]
        for sub in subs[:2]:
            shown.append(await rotate(client, sub["id"]))
        shown.append(await rotate(client, subs[0]["id"]))
        for sub in subs:
            assert await shown_secret(client, sub["id"]) in shown

    rows = await stored_rows(database_url)
    assert len(rows) == len(subs)
    everything = repr(rows)
    for secret in shown:
        assert secret not in everything
        assert secret.removeprefix("whsec_") not in everything
    for row in rows:
        assert sealed_with(row["secret"], key), row["secret"]
        assert row["previous_secret"] is None or sealed_with(row["previous_secret"], key)
    assert sum(r["previous_secret"] is not None for r in rows) == 2
    if backend == "sqlite":
        on_disk = database_files(database_url)
        for secret in shown:
            assert secret.encode() not in on_disk


async def test_a_sealed_secret_does_not_open_in_another_row_or_column(
    settings: Settings, database_url: str
) -> None:
    key = new_key()
    async with api(settings, key) as client:
        a, b = await create(client), await create(client)
        await rotate(client, b["id"])
        sql = "UPDATE subscriptions SET secret = (SELECT secret FROM subscriptions WHERE id = :a)"
        await raw_update(database_url, sql + " WHERE id = :b", a=a["id"], b=b["id"])
        moved = await client.get(f"/v1/subscriptions/{b['id']}/secret")
        problem = assert_problem(moved, 503)
        assert "altered or copied" in problem["detail"], problem
        assert a["secret"] not in moved.text

        # Within one row: the previous secret's ciphertext in the secret's column.
        await raw_update(
            database_url,
            "UPDATE subscriptions SET secret = previous_secret WHERE id = :b",
            b=b["id"],
        )
        assert_problem(await client.get(f"/v1/subscriptions/{b['id']}/secret"), 503)
        # The row is intact otherwise, and the untouched one still opens.
        assert (await client.get(f"/v1/subscriptions/{b['id']}")).status_code == 200
        assert await shown_secret(client, a["id"]) == a["secret"]


async def test_plaintext_rows_keep_working_once_keys_are_set(
    settings: Settings, database_url: str
) -> None:
    async with api(settings) as client:  # no keys: stored as before
        old = await create(client)
    (row,) = await stored_rows(database_url)
    assert row["secret"] == old["secret"]

    key = new_key()
    async with api(settings, key) as client:
        assert await shown_secret(client, old["id"]) == old["secret"]
        new = await create(client)
        assert await shown_secret(client, new["id"]) == new["secret"]
        rotated = await rotate(client, old["id"])
    rows = {r["id"]: r for r in await stored_rows(database_url)}
    assert sealed_with(rows[new["id"]]["secret"], key)
    # A rotation writes both of the row's secrets sealed, the plaintext one too.
    assert sealed_with(rows[old["id"]]["secret"], key)
    assert sealed_with(rows[old["id"]]["previous_secret"], key)
    assert old["secret"] not in repr(rows)
    assert rotated not in repr(rows)


async def test_a_secret_whose_key_is_not_configured_is_a_clear_503(
    settings: Settings, database_url: str
) -> None:
    gone, other = new_key(), new_key()
    async with api(settings, gone) as client:
        sub = await create(client, description="keep me")
    before = await stored_rows(database_url)

    async with api(settings, other) as client:
        for answer in (
            await client.get(f"/v1/subscriptions/{sub['id']}/secret"),
            await client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret"),
        ):
            problem = assert_problem(answer, 503)
            assert problem["type"] == "urn:eventrelay:problem:secret-unavailable"
            assert key_id(gone) in problem["detail"]
            assert "EVENTRELAY_ENCRYPTION_KEYS" in problem["detail"]
        # What does not need the secret still works.
        listed = await client.get("/v1/subscriptions")
        assert [s["id"] for s in listed.json()["items"]] == [sub["id"]]
        paused = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "paused"})
        assert paused.status_code == 200, paused.text
    after = await stored_rows(database_url)
    assert (after[0]["secret"], after[0]["previous_secret"]) == (
        before[0]["secret"],
        before[0]["previous_secret"],
    )

    async with api(settings) as client:  # no keys at all: the same clear answer
        problem = assert_problem(await client.get(f"/v1/subscriptions/{sub['id']}/secret"), 503)
        assert key_id(gone) in problem["detail"]


async def test_key_rotation_moves_every_secret_to_the_new_key(
    settings: Settings, database_url: str
) -> None:
    old_key, new_key_ = new_key(), new_key()
    async with api(settings) as client:
        plain = await create(client)
    async with api(settings, old_key) as client:
        sealed = [await create(client) for _ in range(4)]
        previous = await rotate(client, sealed[0]["id"])
    secrets = {plain["id"]: plain["secret"]} | {s["id"]: s["secret"] for s in sealed}
    secrets[sealed[0]["id"]] = previous

    # The new key first, the old one still there: everything opens.
    rotating = with_keys(settings, new_key_, old_key)
    async with running(rotating) as client:
        for sid, secret in secrets.items():
            assert await shown_secret(client, sid) == secret
    reports = await rotate_encryption_key(rotating, batch=2)
    assert reports["subscriptions"].changed == 5
    assert reports["subscriptions"].unreadable == []
    rows = await stored_rows(database_url)
    for row in rows:
        assert sealed_with(row["secret"], new_key_)
        assert row["previous_secret"] is None or sealed_with(row["previous_secret"], new_key_)
    again = await rotate_encryption_key(rotating, batch=2)
    assert again["subscriptions"].changed == 0
    assert await stored_rows(database_url) == rows  # nothing written a second time

    # The old key removed: everything still opens, and the signing keys still rotate.
    async with api(settings, new_key_) as client:
        for sid, secret in secrets.items():
            assert await shown_secret(client, sid) == secret
        assert await rotate(client, sealed[1]["id"]) != secrets[sealed[1]["id"]]


async def test_rotate_encryption_key_reports_what_it_cannot_open(
    settings: Settings, database_url: str
) -> None:
    lost, kept = new_key(), new_key()
    async with api(settings, lost) as client:
        orphan = await create(client)
    async with api(settings, kept) as client:
        fine = await create(client)
    async with api(settings) as client:
        plain = await create(client)
    reports = await rotate_encryption_key(with_keys(settings, kept), batch=1)
    report = reports["subscriptions"]
    assert report.changed == 1  # the plaintext row
    assert len(report.unreadable) == 1
    assert orphan["id"] in report.unreadable[0]
    assert key_id(lost) in report.unreadable[0]
    rows = {r["id"]: r for r in await stored_rows(database_url)}
    assert sealed_with(rows[plain["id"]]["secret"], kept)
    assert sealed_with(rows[fine["id"]]["secret"], kept)
    assert sealed_with(rows[orphan["id"]]["secret"], lost)  # left as it was

    with pytest.raises(ValueError, match="EVENTRELAY_ENCRYPTION_KEYS is not set"):
        await rotate_encryption_key(settings)


SUBSCRIPTIONS = 60
ROTATORS = 4


async def test_rotate_secret_while_the_keys_rotate_loses_nothing(
    settings: Settings, database_url: str
) -> None:
    """``rotate-encryption-key`` (its own connections, as its own process would
    be) runs in small batches while clients rotate signing secrets as fast as they
    can; afterwards every subscription's secret is the last one its client was
    given, and the previous one the one given before it."""
    old_key, new_key_ = new_key(), new_key()
    async with api(settings, old_key) as client:
        subs = [await create(client) for _ in range(SUBSCRIPTIONS)]
    given: dict[str, list[str]] = {s["id"]: [s["secret"]] for s in subs}
    rotating = with_keys(settings, new_key_, old_key)
    during = 0

    async with running(rotating) as client:
        resealing = asyncio.create_task(rotate_encryption_key(rotating, batch=3))

        async def rotator(seed: int) -> None:
            nonlocal during
            pick = random.Random(seed)
            while not resealing.done():
                sid = pick.choice(subs)["id"]
                given[sid].append(await rotate(client, sid))
                during += 1

        await asyncio.gather(*(rotator(n) for n in range(ROTATORS)))
        report = (await resealing)["subscriptions"]
        assert during >= ROTATORS, "the rotations did not overlap the re-encryption"
        assert report.unreadable == []
        for sid, secrets in given.items():
            assert await shown_secret(client, sid) == secrets[-1]

    async with api(settings, new_key_) as client:  # the old key gone
        for sid, secrets in given.items():
            assert await shown_secret(client, sid) == secrets[-1]
    db = open_database(database_url, keyring=with_keys(settings, new_key_).keyring())
    try:
        stored = await subscription_store.get_many(db, given)
    finally:
        await db.dispose()
    for sid, secrets in given.items():
        sub = stored[sid]
        assert sub.secret.open() == secrets[-1]
        if len(secrets) > 1:
            assert sub.previous_secret is not None
            assert sub.previous_secret.open() == secrets[-2]
    for row in await stored_rows(database_url):
        assert sealed_with(row["secret"], new_key_)
        assert row["previous_secret"] is None or sealed_with(row["previous_secret"], new_key_)


async def test_a_broker_password_is_stored_sealed_and_still_delivers_the_answer_masked(
    settings: Settings, database_url: str
) -> None:
    key = new_key()
    password = "s3cr3t-broker-pass"
    broker = f"amqp://relay:{password}@8.8.8.8:5672/"
    destination = {"type": "rabbitmq", "url": broker, "exchange": "", "routing_key": "{type}"}
    async with api(settings, key) as client:
        response = await client.post(
            "/v1/subscriptions", json={"destination": destination, "event_types": ["*"]}
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert password not in response.text
        assert created["destination"]["url"] == "amqp://relay:***@8.8.8.8:5672/"

    (row,) = await stored_rows(database_url)
    assert password not in repr(row)
    assert sealed_with(row["destination_url"], key), row["destination_url"]

    # The worker's view of the subscription opens it: the connection URL in the clear.
    db = open_database(database_url, keyring=with_keys(settings, key).keyring())
    try:
        opened = await subscription_store.get(db, "default", created["id"])
    finally:
        await db.dispose()
    assert opened is not None
    assert opened.target == broker
