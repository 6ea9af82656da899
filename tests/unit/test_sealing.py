"""Sealing values at rest (app/domain/sealing.py): the format, the keys, the errors."""

from __future__ import annotations

import base64
import os

import pytest
from pydantic import ValidationError

from app.domain.sealing import Keyring, key_id, parse_keys
from app.errors import SecretUnavailable
from app.settings import Settings
from app.store.sealed import SUBSCRIPTIONS, Sealed

AAD = b"eventrelay:subscriptions.secret:sub_1"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_a_sealed_value_names_its_version_and_key_and_holds_a_fresh_nonce() -> None:
    key = os.urandom(32)
    ring = Keyring([key])
    sealed = ring.seal(SECRET, AAD)
    prefix = f"enc:v1:{key_id(key)}:"
    assert sealed.startswith(prefix)
    blob = base64.urlsafe_b64decode(sealed[len(prefix) :])
    assert len(blob) == 12 + len(SECRET) + 16  # nonce, ciphertext, tag
    assert SECRET.encode() not in blob
    again = ring.seal(SECRET, AAD)
    assert again != sealed
    assert base64.urlsafe_b64decode(again[len(prefix) :])[:12] != blob[:12]
    assert ring.open(sealed, AAD, "it") == ring.open(again, AAD, "it") == SECRET


def test_the_first_key_seals_and_every_key_opens() -> None:
    old, new = os.urandom(32), os.urandom(32)
    by_old = Keyring([old]).seal(SECRET, AAD)
    both = Keyring([new, old])
    assert both.open(by_old, AAD, "it") == SECRET
    assert not both.is_current(by_old)
    by_new = both.seal(SECRET, AAD)
    assert both.is_current(by_new)
    assert Keyring([new]).open(by_new, AAD, "it") == SECRET


@pytest.mark.parametrize(
    "aad",
    [
        b"eventrelay:subscriptions.secret:sub_2",  # another row
        b"eventrelay:subscriptions.previous_secret:sub_1",  # another column
        b"eventrelay:destinations.secret:sub_1",  # another table
    ],
)
def test_a_value_opens_only_where_it_was_sealed(aad: bytes) -> None:
    ring = Keyring([os.urandom(32)])
    sealed = ring.seal(SECRET, AAD)
    with pytest.raises(SecretUnavailable, match="altered or copied") as caught:
        ring.open(sealed, aad, "subscriptions.secret of sub_2")
    assert SECRET not in caught.value.detail


def test_an_altered_value_does_not_open() -> None:
    ring = Keyring([os.urandom(32)])
    sealed = ring.seal(SECRET, AAD)
    prefix, _, encoded = sealed.rpartition(":")
    blob = bytearray(base64.urlsafe_b64decode(encoded))
    blob[20] ^= 1
    altered = f"{prefix}:{base64.urlsafe_b64encode(bytes(blob)).decode()}"
    with pytest.raises(SecretUnavailable, match="altered"):
        ring.open(altered, AAD, "it")


def test_a_value_sealed_with_a_key_not_configured_names_the_key_not_the_value() -> None:
    gone, kept = os.urandom(32), os.urandom(32)
    sealed = Keyring([gone]).seal(SECRET, AAD)
    for ring in (Keyring([kept]), Keyring()):
        with pytest.raises(SecretUnavailable) as caught:
            ring.open(sealed, AAD, "subscriptions.secret of sub_1")
        detail = caught.value.detail
        assert key_id(gone) in detail
        assert "EVENTRELAY_ENCRYPTION_KEYS" in detail
        assert "subscriptions.secret of sub_1" in detail
        assert caught.value.status == 503


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("enc:v9:abcdef01:AAAA", "format"),
        ("enc:v1:abcdef01:", "not a sealed value"),
        ("enc:v1:short:" + "A" * 40, "not a sealed value"),
        ("enc:v1:abcdef01:!!!", "not a sealed value"),
    ],
)
def test_a_value_that_only_looks_sealed_is_refused(stored: str, reason: str) -> None:
    with pytest.raises(SecretUnavailable, match=reason):
        Keyring([os.urandom(32)]).open(stored, AAD, "it")


def test_without_keys_values_are_stored_as_they_are() -> None:
    ring = Keyring()
    assert ring.current is None
    assert ring.seal(SECRET, AAD) == SECRET
    assert ring.open(SECRET, AAD, "it") == SECRET
    assert ring.is_current(SECRET)
    # With keys, a plaintext value (written before them) opens as itself.
    keyed = Keyring([os.urandom(32)])
    assert keyed.open(SECRET, AAD, "it") == SECRET
    assert not keyed.is_current(SECRET)


def test_parse_keys() -> None:
    a, b = os.urandom(32), os.urandom(32)
    assert parse_keys("") == ()
    assert parse_keys(f" {b64(a)} , {b64(b)} ") == (a, b)
    urlsafe = base64.urlsafe_b64encode(a).decode()
    assert parse_keys(urlsafe) == (a,)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("c2VjcmV0", "key 1 of 1 decodes to 6 bytes; a key is exactly 32"),
        ("not base64 at all!", "key 1 of 1 is not base64"),
        ("{good},", "key 2 of 2 is empty"),
        ("{good},{good}", "the same key is listed twice"),
        ("{good}," + b64(bytes(range(33))), "key 2 of 2 decodes to 33 bytes"),
    ],
)
def test_a_malformed_key_is_refused_by_position_never_echoed(value: str, message: str) -> None:
    good = b64(os.urandom(32))
    value = value.replace("{good}", good)
    with pytest.raises(ValueError, match=message) as caught:
        parse_keys(value)
    assert str(caught.value).startswith("EVENTRELAY_ENCRYPTION_KEYS: ")
    assert good not in str(caught.value)

    with pytest.raises(ValidationError) as invalid:
        Settings(encryption_keys=value)
    shown = str(invalid.value)
    assert "EVENTRELAY_ENCRYPTION_KEYS" in shown
    assert good not in shown
    assert value not in shown


def test_settings_never_show_the_keys() -> None:
    key = os.urandom(32)
    settings = Settings(encryption_keys=b64(key))
    assert b64(key) not in repr(settings)
    assert repr(key) not in repr(settings)
    assert settings.keyring().current == key_id(key)
    assert Settings().keyring().current is None


def test_sealed_columns_seal_only_their_columns_and_bind_each_to_its_row() -> None:
    ring = Keyring([os.urandom(32)])
    row = SUBSCRIPTIONS.seal(
        ring, "sub_1", {"secret": SECRET, "previous_secret": None, "url": "https://x.test"}
    )
    assert row["url"] == "https://x.test"
    assert row["previous_secret"] is None
    assert row["secret"].startswith("enc:v1:")
    sealed = SUBSCRIPTIONS.read(ring, "sub_1", "secret", row["secret"])
    assert sealed is not None
    assert sealed.open() == SECRET
    assert SECRET not in repr(sealed)
    assert row["secret"] not in repr(sealed)
    elsewhere = SUBSCRIPTIONS.read(ring, "sub_2", "secret", row["secret"])
    assert elsewhere is not None
    with pytest.raises(SecretUnavailable, match="subscriptions.secret of sub_2"):
        elsewhere.open()
    assert Sealed.plain(SECRET).open() == SECRET
