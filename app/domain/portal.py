"""Tenant portal links: a tenant and an expiry, signed with the installation's
portal key (HMAC-SHA256), so any API process can check a link it did not make.

A link carries ``tenant``, ``expires`` (Unix seconds) and ``sig``; changing any
of them breaks the signature, and a link past ``expires`` is refused even when
its signature is good. The frame-ancestor sources that may embed the portal
are checked here too (a CSP source list, so nothing may smuggle a directive).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

EXPIRES_MIN, EXPIRES_MAX, EXPIRES_DEFAULT = 60, 86_400, 3_600
_CONTEXT = b"eventrelay portal link v1"
_SOURCE = re.compile(
    r"'self'|https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?|https:",
)


class InvalidLink(ValueError):
    """A portal link that was tampered with, forged or has expired."""


@dataclass(frozen=True, slots=True)
class PortalGrant:
    tenant_id: str
    expires_at: datetime


def signature(key: bytes, tenant_id: str, expires: int) -> str:
    message = b"\x1f".join((_CONTEXT, tenant_id.encode(), str(expires).encode()))
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def link_params(key: bytes, tenant_id: str, expires_at: datetime) -> dict[str, str]:
    expires = int(expires_at.timestamp())
    return {"tenant": tenant_id, "expires": str(expires), "sig": signature(key, tenant_id, expires)}


def verify(
    key: bytes, tenant: str | None, expires: str | None, sig: str | None, now: datetime
) -> PortalGrant:
    """The grant a link carries, or :class:`InvalidLink`."""
    if not tenant or not expires or not sig or not expires.isdigit() or len(expires) > 12:
        raise InvalidLink("the portal link is incomplete")
    if not hmac.compare_digest(signature(key, tenant, int(expires)).encode(), sig.encode()):
        raise InvalidLink("the portal link is not one this installation made")
    expires_at = datetime.fromtimestamp(int(expires), UTC)
    if expires_at <= now:
        raise InvalidLink("the portal link has expired")
    return PortalGrant(tenant, expires_at)


def frame_ancestors(value: str) -> tuple[str, ...]:
    """``EVENTRELAY_PORTAL_FRAME_ANCESTORS``: space-separated CSP sources
    (origins such as ``https://app.example.com``, ``https://*.example.com``,
    ``'self'``); ValueError names the first that is not one."""
    sources = tuple(value.split())
    for source in sources:
        if not _SOURCE.fullmatch(source):
            raise ValueError(f"{source!r} is not an origin, 'https://*.domain' or 'self'")
    return sources
