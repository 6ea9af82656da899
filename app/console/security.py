"""The console's browser-facing rules: response headers, the session cookie,
and refusing requests that come from another site.

Everything here is pure string work on headers, so unit tests drive it.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "eventrelay_console"
COOKIE_PATH = "/console"

# No inline script or style anywhere: the pages load console.js and console.css
# from this origin and nothing else.
CSP_BASE = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'"
)
CSP = f"{CSP_BASE}; frame-ancestors 'none'"
PAGE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
FRAMING = (b"content-security-policy", b"x-frame-options")


def portal_csp(frame_ancestors: str) -> str:
    """A portal page's policy: framable by the configured origins only."""
    return f"{CSP_BASE}; frame-ancestors {frame_ancestors or chr(39) + 'none' + chr(39)}"


NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders:
    """Every console response carries the CSP and friends; pages are not cached
    (they show operator data), the static files may be."""

    def __init__(self, app: ASGIApp, *, static_prefix: str) -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(self.static_prefix)
        extra = PAGE_HEADERS if static else [*PAGE_HEADERS, NO_STORE]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                # A portal page brings its own policy (who may frame it).
                own = any(name == b"content-security-policy" for name, _ in headers)
                adding = [h for h in extra if not (own and h[0] in FRAMING)]
                message["headers"] = [*headers, *adding]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cross_site_reason(headers: Mapping[str, str]) -> str | None:
    """Why a mutating request looks cross-site, or None when it comes from our
    own pages. Browsers send ``Sec-Fetch-Site`` and ``Origin`` on every POST;
    a client that sends neither is not a browser a site can drive, and still
    needs the session's CSRF token."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        return f"the request came from another site (Sec-Fetch-Site: {fetch_site})"
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return "the request's Origin is not this console's"
    return None


def cookie_attributes(*, secure: bool, max_age: int, framed: bool = False) -> dict[str, object]:
    """The session cookie: never readable by script, never sent cross-site —
    except a portal's that other sites may frame (over HTTPS only), which is
    ``SameSite=None; Secure; Partitioned`` (a cookie of that embedding only)."""
    cross_site = framed and secure
    return {
        "key": COOKIE,
        "path": COOKIE_PATH,
        "httponly": True,
        "samesite": "none" if cross_site else "strict",
        "secure": secure,
        "partitioned": cross_site,
        "max_age": max_age,
    }


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if (
        target
        and (target == COOKIE_PATH or target.startswith(COOKIE_PATH + "/"))
        and "//" not in target
        and "\\" not in target
    ):
        return target
    return COOKIE_PATH
