"""Request headers as the ingest route reads them (``app.api.body.headers``)."""

from __future__ import annotations

from starlette.requests import Request

from app.api.body import headers, media_type


def _request(raw: list[tuple[bytes, bytes]]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_headers_read_like_starlettes() -> None:
    raw = [
        (b"content-type", b"Application/JSON; charset=utf-8"),
        (b"x-repeated", b"first"),
        (b"x-repeated", b"second"),
        (b"x-latin", "café".encode("latin-1")),
    ]
    request = _request(raw)
    found = headers(request)
    for name in ("content-type", "x-repeated", "x-latin", "missing"):
        assert found.get(name) == request.headers.get(name), name
    assert media_type(request) == "application/json"


def test_headers_are_decoded_once_per_request() -> None:
    request = _request([(b"authorization", b"Bearer x")])
    assert headers(request) is headers(request)
    assert headers(_request([])) == {}
