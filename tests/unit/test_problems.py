"""Every error class renders as RFC 9457 problem details with its own status."""

from __future__ import annotations

import orjson
import pytest

from app.api.problems import PROBLEM_JSON, render
from app.errors import (
    BadRequest,
    Conflict,
    EventRelayError,
    FieldError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)

PLAIN = [
    (EventRelayError, 500, "internal"),
    (BadRequest, 400, "bad-request"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not-found"),
    (Conflict, 409, "conflict"),
    (PayloadTooLarge, 413, "payload-too-large"),
    (UnsupportedMediaType, 415, "unsupported-media-type"),
    (ServiceUnavailable, 503, "unavailable"),
    (StoreUnavailable, 503, "store-unavailable"),
]


@pytest.mark.parametrize(("error", "status", "slug"), PLAIN)
def test_plain_errors(error: type[EventRelayError], status: int, slug: str) -> None:
    response = render(error("what went wrong"))
    assert response.status_code == status
    assert response.media_type == PROBLEM_JSON
    assert response.headers["content-type"] == PROBLEM_JSON
    assert orjson.loads(response.body) == {
        "type": f"urn:eventrelay:problem:{slug}",
        "title": error.title,
        "status": status,
        "detail": "what went wrong",
    }


@pytest.mark.parametrize(("error", "status", "slug"), PLAIN)
def test_detail_defaults_to_the_title(error: type[EventRelayError], status: int, slug: str) -> None:
    body = orjson.loads(render(error()).body)
    assert body["detail"] == error.title
    assert body["title"]


def test_validation_failed_lists_its_errors() -> None:
    errors = [FieldError("/data/total", "must be a number"), FieldError("/type", "too long")]
    response = render(ValidationFailed("the request body is invalid", errors))
    assert response.status_code == 422
    assert response.media_type == PROBLEM_JSON
    assert orjson.loads(response.body) == {
        "type": "urn:eventrelay:problem:validation",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "the request body is invalid",
        "errors": [
            {"loc": "/data/total", "msg": "must be a number"},
            {"loc": "/type", "msg": "too long"},
        ],
    }


def test_unauthorized_challenges_for_a_bearer_token() -> None:
    response = render(Unauthorized())
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("error", [BadRequest, Forbidden, NotFound, ValidationFailed])
def test_only_401_carries_a_challenge(error: type[EventRelayError]) -> None:
    assert "www-authenticate" not in render(error()).headers


@pytest.mark.parametrize("error", [ServiceUnavailable, StoreUnavailable])
def test_unavailable_asks_to_retry(error: type[EventRelayError]) -> None:
    retry_after = render(error()).headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
