"""Standard Webhooks signatures and ``whsec_`` secrets."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.domain import webhook
from app.domain.signing import (
    generate_secret,
    prepared,
    secret_key,
    sign,
    signature_header,
)

# The test vector of the Standard Webhooks specification and reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _secret(size: int, fill: int = 7) -> str:
    return "whsec_" + base64.b64encode(bytes([fill]) * size).decode()


def test_spec_test_vector() -> None:
    key = secret_key(SPEC_SECRET)
    assert sign(key, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE


def test_spec_test_vector_as_a_header() -> None:
    header = signature_header([secret_key(SPEC_SECRET)], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    assert header == SPEC_SIGNATURE


def test_a_prepared_key_signs_the_same_every_time() -> None:
    key = prepared(secret_key(SPEC_SECRET))
    for _ in range(2):  # the prepared state is copied, never consumed
        assert sign(key, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE
    other = secret_key(_secret(64, 2))
    header = signature_header([key, prepared(other)], SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    assert header == f"{SPEC_SIGNATURE} {sign(other, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)}"


@pytest.mark.parametrize(
    ("change", "args"),
    [
        ("id", ("msg_other", SPEC_TIMESTAMP, SPEC_PAYLOAD)),
        ("timestamp", (SPEC_MSG_ID, SPEC_TIMESTAMP + 1, SPEC_PAYLOAD)),
        ("body", (SPEC_MSG_ID, SPEC_TIMESTAMP, b'{"test":2432232314}')),
    ],
)
def test_every_signed_part_matters(change: str, args: tuple[str, int, bytes]) -> None:
    assert sign(secret_key(SPEC_SECRET), *args) != SPEC_SIGNATURE, change


def test_one_signature_per_key_space_separated() -> None:
    keys = [secret_key(SPEC_SECRET), secret_key(_secret(32, 1)), secret_key(_secret(64, 2))]
    header = signature_header(keys, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD)
    parts = header.split(" ")
    assert len(parts) == 3
    assert parts[0] == SPEC_SIGNATURE
    assert parts == [sign(k, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) for k in keys]
    assert all(p.startswith("v1,") for p in parts)
    assert len(set(parts)) == 3


@pytest.mark.parametrize("size", [24, 32, 48, 64])
def test_secrets_of_24_to_64_bytes_are_valid(size: int) -> None:
    assert secret_key(_secret(size)) == bytes([7]) * size


INVALID_SECRETS = {
    "no-prefix": base64.b64encode(b"k" * 32).decode(),
    "wrong-prefix": "whsek_" + base64.b64encode(b"k" * 32).decode(),
    "upper-prefix": "WHSEC_" + base64.b64encode(b"k" * 32).decode(),
    "prefix-only": "whsec_",
    "not-base64": "whsec_" + "!" * 44,
    "impossible-length": "whsec_" + base64.b64encode(b"k" * 32).decode() + "A",
    "spaces": "whsec_ " + base64.b64encode(b"k" * 32).decode(),
    "urlsafe-alphabet": "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),
    "23-bytes": _secret(23),
    "65-bytes": _secret(65),
    "1-byte": _secret(1),
}


@pytest.mark.parametrize("secret", INVALID_SECRETS.values(), ids=INVALID_SECRETS.keys())
def test_invalid_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        secret_key(secret)


def test_generated_secrets_are_valid_and_distinct() -> None:
    secrets = [generate_secret() for _ in range(50)]
    assert len(set(secrets)) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(secret_key(secret)) == 32


def _headers(secrets: list[str], payload: bytes, timestamp: int) -> dict[str, str]:
    return webhook.headers(
        event_id="evt_01JD0000000000000000000000",
        timestamp=timestamp,
        payload=payload,
        keys=[secret_key(s) for s in secrets],
        user_agent="eventrelay/test",
        custom={},
    )


def test_standardwebhooks_library_verifies_what_we_send() -> None:
    secret = generate_secret()
    payload = webhook.body(
        "evt_01JD0000000000000000000000",
        "order.created",
        "2026-11-26T10:00:00.000000Z",
        "customer-42",
        2,
        '{"total": 42}',
    )
    headers = _headers([secret], payload, int(time.time()))
    verified = Webhook(secret).verify(payload, headers)
    assert verified["data"] == {"total": 42}


def test_either_secret_verifies_during_rotation() -> None:
    new, old = generate_secret(), generate_secret()
    payload = b'{"id":"evt_x","data":null}'
    headers = _headers([new, old], payload, int(time.time()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(payload, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(payload, headers)


def test_tampered_body_does_not_verify() -> None:
    secret = generate_secret()
    payload = b'{"id":"evt_x","data":1}'
    headers = _headers([secret], payload, int(time.time()))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"id":"evt_x","data":2}', headers)


def test_the_library_signs_the_spec_vector_like_we_do() -> None:
    moment = datetime.fromtimestamp(SPEC_TIMESTAMP, tz=UTC)
    signed = Webhook(SPEC_SECRET).sign(SPEC_MSG_ID, moment, SPEC_PAYLOAD.decode())
    assert signed == SPEC_SIGNATURE
