"""Concurrent ``rotate-secret`` calls, on both databases (API.md, Subscriptions),
with secrets stored as they are and encrypted: the secret that was current
before the last rotation keeps signing for the grace period, however the
rotations interleave."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretBytes
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.main import create_app
from app.settings import Settings
from tests.e2e.receivers import Receipt, Receiver, wait_until
from tests.integration.support import client_for

ROTATIONS = 8
DEADLINE = 10.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest.fixture(params=["plaintext", "encrypted"])
async def relay(
    settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a delivery worker in the same process; secrets stored as they
    are, or encrypted (EVENTRELAY_ENCRYPTION_KEYS)."""
    if request.param == "encrypted":
        settings = settings.model_copy(update={"encryption_keys": (SecretBytes(os.urandom(32)),)})
    application = create_app(settings, worker=True)
    async with application.router.lifespan_context(application), client_for(application) as c:
        yield c


def verifies(secret: str, receipt: Receipt) -> bool:
    try:
        Webhook(secret).verify(receipt.body, receipt.headers)
    except WebhookVerificationError:
        return False
    return True


async def test_concurrent_rotations_keep_the_secret_before_the_last(
    relay: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await relay.post(
        "/v1/subscriptions", json={"url": receiver.url(), "event_types": ["rotated"]}
    )
    assert created.status_code == 201, created.text
    sub = created.json()
    url = f"/v1/subscriptions/{sub['id']}"

    answers = await asyncio.gather(*(relay.post(url + "/rotate-secret") for _ in range(ROTATIONS)))
    assert [a.status_code for a in answers] == [200] * ROTATIONS, [a.text for a in answers]
    returned = {a.json()["secret"] for a in answers}
    assert len(returned) == ROTATIONS
    current = (await relay.get(url + "/secret")).json()["secret"]
    assert current in returned

    accepted = await relay.post(
        "/v1/events", json={"type": "rotated", "data": {}}, headers={"Idempotency-Key": "r"}
    )
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["id"]
    await wait_until(lambda: event_id in receiver.succeeded_ids(), DEADLINE, message="the delivery")
    (receipt,) = receiver.for_event(event_id)
    # Signed with the current secret and the one it replaced: the secret one of the
    # other rotations returned, the second-to-last in the order they took effect.
    # A rotation that read the secret before another's write landed would keep the
    # original secret instead, and the secret a client was last given would not verify.
    assert len(receipt.headers["webhook-signature"].split(" ")) == 2
    assert verifies(current, receipt)
    assert not verifies(sub["secret"], receipt), "the original secret came back"
    previous = [s for s in returned - {current} if verifies(s, receipt)]
    assert len(previous) == 1, "the secret before the last rotation no longer signs"
