"""Which addresses a webhook may not reach (unless private targets are allowed)."""

from __future__ import annotations

import pytest

from app.domain.ssrf import forbidden_reason

REFUSED = {
    "loopback-v4": "127.0.0.1",
    "loopback-v4-other": "127.255.255.254",
    "loopback-v6": "::1",
    "private-10": "10.0.0.1",
    "private-10-top": "10.255.255.255",
    "private-172.16": "172.16.0.1",
    "private-172.31": "172.31.255.255",
    "private-192.168": "192.168.1.1",
    "link-local-v4": "169.254.169.254",
    "cgnat-low": "100.64.0.1",
    "cgnat-high": "100.127.255.254",
    "multicast-v4": "224.0.0.1",
    "multicast-v4-top": "239.255.255.250",
    "multicast-v6": "ff02::1",
    "unspecified-v4": "0.0.0.0",
    "this-network": "0.1.2.3",
    "unspecified-v6": "::",
    "reserved-240": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "v4-mapped-loopback": "::ffff:127.0.0.1",
    "v4-mapped-private": "::ffff:10.0.0.1",
    "v4-mapped-metadata": "::ffff:169.254.169.254",
    "link-local-v6": "fe80::",
    "link-local-v6-scoped": "fe80::1%eth0",
    "ula-fc00": "fc00::1",
    "ula-fd00": "fd12:3456::1",
    "nat64-private": "64:ff9b::10.0.0.1",
    "nat64-loopback": "64:ff9b::7f00:1",
    "6to4-loopback": "2002:7f00:1::",
    "documentation-v4": "192.0.2.1",
    "documentation-v6": "2001:db8::1",
    "benchmarking": "198.18.0.1",
    "ietf-protocol": "192.0.0.8",
    "not-an-address": "example.com",
}

ALLOWED = {
    "google-dns": "8.8.8.8",
    "cloudflare-v6": "2606:4700::1111",
    "cloudflare-v4": "1.1.1.1",
    "just-past-172.16/12": "172.32.0.1",
    "just-past-cgnat": "100.128.0.1",
    "just-before-cgnat": "100.63.255.255",
    "v4-mapped-public": "::ffff:8.8.8.8",
    "nat64-public": "64:ff9b::8.8.8.8",
}


@pytest.mark.parametrize("address", REFUSED.values(), ids=REFUSED.keys())
def test_refused(address: str) -> None:
    reason = forbidden_reason(address)
    assert reason is not None
    assert reason


@pytest.mark.parametrize("address", ALLOWED.values(), ids=ALLOWED.keys())
def test_allowed(address: str) -> None:
    assert forbidden_reason(address) is None


def test_reason_names_the_address_class() -> None:
    assert "loopback" in (forbidden_reason("127.0.0.1") or "")
    assert "CGNAT" in (forbidden_reason("100.64.0.1") or "")
    assert "link-local" in (forbidden_reason("169.254.169.254") or "")
    assert "loopback" in (forbidden_reason("::ffff:127.0.0.1") or "")
