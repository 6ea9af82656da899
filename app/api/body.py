"""Reading request bodies: media type, size limit (413 before reading it all), strict JSON."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from app.domain import jsonbody
from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

_HEADERS = "eventrelay.headers"


def headers(request: Request) -> dict[str, str]:
    """The request's headers by (lowercase) name, decoded once per request.

    Ingest reads six headers; Starlette's ``Headers`` finds each one by
    scanning and decoding the whole list (3 µs of a request's CPU here).
    Names arrive lowercase (ASGI); of a repeated header the first counts, as
    with ``Headers.get``.
    """
    found: dict[str, str] | None = request.scope.get(_HEADERS)
    if found is None:
        found = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(request.scope["headers"])
        }
        request.scope[_HEADERS] = found
    return found


def media_type(request: Request) -> str:
    return headers(request).get("content-type", "").split(";", 1)[0].strip().lower()


def require_json(request: Request) -> None:
    if media_type(request) != "application/json":
        raise UnsupportedMediaType("the body must be sent as Content-Type: application/json")


async def read_limited(request: Request, limit: int) -> bytes:
    declared = headers(request).get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    require_json(request)
    body = await read_limited(request, limit)
    if not body:
        raise BadRequest("the body is empty")
    return jsonbody.parse(body)
