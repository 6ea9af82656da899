"""Portal links: signed, tamper-evident, short-lived; frame-ancestor sources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.domain.portal import InvalidLink, frame_ancestors, link_params, verify

KEY = b"k" * 32
NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


def test_a_link_names_its_tenant_until_it_expires() -> None:
    params = link_params(KEY, "acme", NOW + timedelta(hours=1))
    grant = verify(KEY, params["tenant"], params["expires"], params["sig"], NOW)
    assert grant.tenant_id == "acme"
    assert grant.expires_at == NOW + timedelta(hours=1)
    with pytest.raises(InvalidLink, match="expired"):
        verify(KEY, params["tenant"], params["expires"], params["sig"], NOW + timedelta(hours=1))


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "globex"},
        {"expires": "99999999999"},
        {"sig": "A" * 43},
        {"sig": ""},
        {"expires": "-1"},
        {"expires": None},
    ],
)
def test_a_changed_link_is_refused(change: dict[str, str | None]) -> None:
    params: dict[str, str | None] = {**link_params(KEY, "acme", NOW + timedelta(hours=1))}
    params.update(change)
    with pytest.raises(InvalidLink):
        verify(KEY, params["tenant"], params["expires"], params["sig"], NOW)


def test_another_installations_key_does_not_verify() -> None:
    params = link_params(b"x" * 32, "acme", NOW + timedelta(hours=1))
    with pytest.raises(InvalidLink, match="not one this installation made"):
        verify(KEY, params["tenant"], params["expires"], params["sig"], NOW)


@pytest.mark.parametrize(
    ("value", "sources"),
    [
        ("", ()),
        ("https://app.example.com", ("https://app.example.com",)),
        (
            "https://app.example.com:8443 https://*.example.org 'self'",
            ("https://app.example.com:8443", "https://*.example.org", "'self'"),
        ),
    ],
)
def test_frame_ancestors_are_csp_sources(value: str, sources: tuple[str, ...]) -> None:
    assert frame_ancestors(value) == sources


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "'none' https://a.example",
        "https://a.example; script-src *",
        "javascript:",
        "a.example",
    ],
)
def test_anything_else_in_frame_ancestors_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        frame_ancestors(value)
