"""RFC 9457 problem details: the one place errors become HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.domain.events import pointer
from app.errors import EventRelayError, FieldError, TooManyRequests

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
}


def problem_body(
    status: int, title: str, detail: str, type_uri: str, errors: list[FieldError] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_uri, "title": title, "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = [{"loc": e.loc, "msg": e.msg} for e in errors]
    return body


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=body["status"], media_type=PROBLEM_JSON, headers=headers
    )


def render(exc: EventRelayError) -> Response:
    errors = getattr(exc, "errors", None)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status == 503:
        headers = {"Retry-After": "1"}
    elif isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    return problem_response(
        problem_body(exc.status, exc.title, exc.detail, exc.type_uri, errors), headers
    )


async def domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, EventRelayError)
    if exc.status >= 500:
        log.warning("request failed: %s", exc.detail, exc_info=exc.__cause__)
    return render(exc)


async def _request_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [FieldError(_loc(e.get("loc", ())), str(e.get("msg", ""))) for e in exc.errors()]
    return problem_response(
        problem_body(
            422, _TITLES[422], "the request is invalid", "urn:eventrelay:problem:validation", errors
        )
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    # FastAPI's loc starts with where the value came from ("query", "path", "body").
    parts = tuple(loc)
    if parts and parts[0] == "body":
        return pointer(parts[1:])
    if parts and parts[0] in ("query", "path", "header"):
        return f"{parts[0]}:{'.'.join(str(p) for p in parts[1:])}"
    return pointer(parts)


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = _TITLES.get(exc.status_code, "Error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    return problem_response(
        problem_body(
            exc.status_code, title, detail, f"urn:eventrelay:problem:http-{exc.status_code}"
        ),
        dict(exc.headers) if exc.headers else None,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    rid = request.scope.get("request_id")
    log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
    body = problem_body(
        500, _TITLES[500], "an unexpected error occurred", "urn:eventrelay:problem:internal"
    )
    return problem_response(body, {"x-request-id": rid} if rid else None)


def install(app: FastAPI) -> None:
    app.add_exception_handler(EventRelayError, domain_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, _unexpected)
