"""The console's browser rules: which requests count as cross-site, where a
sign-in may send the browser, what every page's headers say."""

from __future__ import annotations

import pytest

from app.console.security import CSP, PAGE_HEADERS, cookie_attributes, cross_site_reason, safe_next

HOST = "console.example:8000"


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"host": HOST, "sec-fetch-site": "same-origin", "origin": f"https://{HOST}"}, False),
        ({"host": HOST, "origin": f"http://{HOST}"}, False),
        ({"host": HOST}, False),  # not a browser: the CSRF token still decides
        ({"host": HOST, "sec-fetch-site": "same-site"}, True),  # a sibling port or subdomain
        ({"host": HOST, "sec-fetch-site": "cross-site"}, True),
        ({"host": HOST, "sec-fetch-site": "none"}, True),
        ({"host": HOST, "origin": "https://evil.example"}, True),
        ({"host": HOST, "origin": "https://console.example:8001"}, True),
        ({"host": HOST, "origin": "null"}, True),
        ({"host": HOST, "sec-fetch-site": "same-origin", "origin": "https://evil.example"}, True),
    ],
)
def test_cross_site_requests_are_told_apart(headers: dict[str, str], refused: bool) -> None:
    assert (cross_site_reason(headers) is not None) is refused


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/console/dlq?subscription_id=sub_1", "/console/dlq?subscription_id=sub_1"),
        ("/console", "/console"),
        ("/console/", "/console/"),
        ("https://evil.example/console/", "/console"),
        ("//evil.example/console/", "/console"),
        ("/console//evil.example", "/console"),
        ("/console\\evil", "/console"),
        ("/consoleX", "/console"),
        ("/v1/events", "/console"),
        (None, "/console"),
        ("", "/console"),
    ],
)
def test_sign_in_sends_the_browser_only_to_console_pages(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_pages_forbid_inline_script_and_framing() -> None:
    directives = {d.split()[0]: d.split()[1:] for d in CSP.split("; ")}
    assert directives["script-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in CSP
    assert "'unsafe-eval'" not in CSP
    assert (b"x-content-type-options", b"nosniff") in PAGE_HEADERS


def test_the_cookie_is_http_only_strict_and_secure_over_https() -> None:
    cookie = cookie_attributes(secure=True, max_age=60)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "strict"
    assert cookie["secure"] is True
    assert cookie_attributes(secure=False, max_age=60)["secure"] is False
