"""Secrets at rest with the real processes: ``eventrelay serve`` with
``EVENTRELAY_ENCRYPTION_KEYS`` signs with encrypted secrets (checked by the
``standardwebhooks`` package on a real receiver), ``eventrelay
rotate-encryption-key`` moves them to a new key while the server serves, and a
bad key refuses to start without showing it."""

from __future__ import annotations

import base64
import os
import subprocess
from typing import Any

import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.domain.sealing import key_id
from app.store.database import open_database
from tests.e2e.conftest import ServerFactory, ServerProcess, eventrelay_executable, json_lines
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import Receipt, ReceiverPool, wait_until

DEADLINE = 20.0
SETTING = "EVENTRELAY_ENCRYPTION_KEYS"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def verifies(secret: str, receipt: Receipt, signature: str) -> bool:
    headers = dict(receipt.headers) | {"webhook-signature": signature}
    try:
        Webhook(secret).verify(receipt.body, headers)
    except WebhookVerificationError:
        return False
    return True


def cli(server: ServerProcess, *args: str, keys: str) -> subprocess.CompletedProcess[str]:
    env = server.environment() | {SETTING: keys}
    return subprocess.run(
        [eventrelay_executable(), *args],
        env=env,
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def stored_secrets(database_url: str) -> list[dict[str, Any]]:
    db = open_database(database_url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(text("SELECT id, secret, previous_secret FROM subscriptions"))
            return [dict(r._mapping) for r in rows]
    finally:
        await db.dispose()


async def test_encrypted_secrets_sign_and_rotate_to_a_new_key_while_serving(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    old, new = new_key(), new_key()
    server = server_factory(database_url, env={SETTING: old})
    receiver = await receivers.start()
    event_type = unique_type("sealed")

    async def publish_and_receive(relay: Relay) -> Receipt:
        accepted = await relay.publish(event_type, {"n": 1})
        await wait_until(
            lambda: accepted["id"] in receiver.succeeded_ids(), DEADLINE, message="the delivery"
        )
        (receipt,) = receiver.for_event(accepted["id"])
        return receipt

    async with Relay(server) as relay:
        sub = await relay.subscribe(receiver.url(), event_types=[event_type])
        first = await publish_and_receive(relay)
        (signature,) = first.headers["webhook-signature"].split(" ")
        assert verifies(sub["secret"], first, signature)
        rotated = await relay.rotate_secret(sub["id"])
        second = await publish_and_receive(relay)
        current, previous = second.headers["webhook-signature"].split(" ")
        assert verifies(rotated, second, current)
        assert verifies(sub["secret"], second, previous)

    rows = await stored_secrets(database_url)
    assert sub["secret"] not in repr(rows)
    assert rotated not in repr(rows)
    assert rows[0]["secret"].startswith(f"enc:v1:{key_id(base64.b64decode(old))}:")

    # The new key first, the old one still there; re-encrypt while it serves.
    server.terminate()
    server.extra_env[SETTING] = f"{new},{old}"
    server.start()
    done = cli(server, "rotate-encryption-key", keys=f"{new},{old}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "1 rows changed"
    assert old not in done.stdout + done.stderr
    again = cli(server, "rotate-encryption-key", keys=f"{new},{old}")
    assert again.stdout.splitlines()[-1] == "0 rows changed"
    new_id = key_id(base64.b64decode(new))
    for row in await stored_secrets(database_url):
        assert row["secret"].startswith(f"enc:v1:{new_id}:")
        assert row["previous_secret"].startswith(f"enc:v1:{new_id}:")

    # The old key removed: the same secrets sign.
    server.terminate()
    server.extra_env[SETTING] = new
    server.start()
    async with Relay(server) as relay:
        third = await publish_and_receive(relay)
        current, previous = third.headers["webhook-signature"].split(" ")
        assert verifies(rotated, third, current)
        assert verifies(sub["secret"], third, previous)


async def test_a_worker_without_the_key_never_signs_wrongly(
    database_url: str, server_factory: ServerFactory, receivers: ReceiverPool
) -> None:
    lost = new_key()
    server = server_factory(database_url, env={SETTING: lost})
    receiver = await receivers.start()
    event_type = unique_type("lost")
    async with Relay(server) as relay:
        await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=[30])
    server.terminate()
    server.extra_env[SETTING] = new_key()
    server.start()
    async with Relay(server) as relay:
        accepted = await relay.publish(event_type, {"n": 1})
        attempts = await wait_until(
            lambda: relay.attempts(accepted["id"]), DEADLINE, message="the failed attempt"
        )
        (attempt,) = attempts
        assert attempt["status_code"] is None
        assert key_id(base64.b64decode(lost)) in attempt["error"]
        assert SETTING in attempt["error"]
        delivery = await relay.delivery(accepted["id"])
        assert delivery["status"] == "pending"
    assert receiver.ids() == set(), "something was sent"
    lines = json_lines(server.stdout())
    logged = [r for r in lines if r.get("message", "").startswith("cannot sign")]
    assert logged
    assert logged[0]["level"] == "error"
    assert logged[0]["event_id"] == accepted["id"]
    # At start already, the server said which key it lacks.
    (warned,) = [r for r in lines if "missing_key_ids" in r]
    assert warned["level"] == "error"
    assert warned["missing_key_ids"] == [key_id(base64.b64decode(lost))]
    assert warned["message"].startswith("1 stored secrets are encrypted with keys")


@pytest.mark.parametrize("command", ["serve", "worker", "rotate-encryption-key"])
def test_a_malformed_key_refuses_to_start_and_names_the_setting_not_the_key(
    database_url: str, server_factory: ServerFactory, command: str
) -> None:
    server = server_factory(database_url, start=False)
    good = new_key()
    short = base64.b64encode(os.urandom(16)).decode()
    done = cli(server, command, keys=f"{good},{short}")
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert good not in output
    assert short not in output
    assert "Traceback" not in output
    (line,) = json_lines(done.stdout)
    assert line["level"] == "error"
    assert line["message"] == (
        f"not started: {SETTING}: key 2 of 2 decodes to 16 bytes; a key is exactly 32"
    )


def test_rotate_encryption_key_needs_a_key(
    database_url: str, server_factory: ServerFactory
) -> None:
    server = server_factory(database_url, start=False)
    done = cli(server, "rotate-encryption-key", keys="")
    assert done.returncode == 2
    assert f"{SETTING} is not set" in done.stderr
