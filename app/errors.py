"""The one error hierarchy. Each class carries its HTTP status; the API renders
any of them as RFC 9457 problem details, so code below the API never builds a
response.

    EventRelayError (500)
     ├── BadRequest (400)            malformed body, bad Idempotency-Key
     ├── Unauthorized (401)          missing or unknown bearer token
     ├── Forbidden (403)             token scope does not allow the call
     ├── NotFound (404)
     │    └── UnknownTenant          the Eventrelay-Tenant header names no tenant
     ├── Conflict (409)              a concurrent request holds the key
     ├── PayloadTooLarge (413)
     ├── UnsupportedMediaType (415)
     ├── ValidationFailed (422)      carries ``errors: [{loc, msg}]``
     ├── TooManyRequests (429)       a tenant's ingest rate; carries ``retry_after``
     └── ServiceUnavailable (503)
          ├── StoreUnavailable       the database cannot be reached
          └── SecretUnavailable      a stored secret does not open with the configured keys
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation failure; ``loc`` is a JSON pointer into the request body.

    Domain checks of a part of the body (a schema) point into that part; the
    service prefixes the part's own pointer.
    """

    loc: str
    msg: str


class EventRelayError(Exception):
    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)

    @property
    def type_uri(self) -> str:
        return f"urn:eventrelay:problem:{self.slug}"


class BadRequest(EventRelayError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(EventRelayError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(EventRelayError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(EventRelayError):
    status, title, slug = 404, "Not Found", "not-found"


class UnknownTenant(NotFound):
    slug = "unknown-tenant"


class Conflict(EventRelayError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(EventRelayError):
    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(EventRelayError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class ValidationFailed(EventRelayError):
    status, title, slug = 422, "Unprocessable Content", "validation"

    def __init__(self, detail: str | None = None, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class TooManyRequests(EventRelayError):
    status, title, slug = 429, "Too Many Requests", "rate-limited"

    def __init__(self, detail: str | None = None, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ServiceUnavailable(EventRelayError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class StoreUnavailable(ServiceUnavailable):
    slug = "store-unavailable"


class SecretUnavailable(ServiceUnavailable):
    """A value stored encrypted cannot be opened: its key is not among
    ``EVENTRELAY_ENCRYPTION_KEYS``, or it does not authenticate. The detail
    names the value and the key's ID, never the value."""

    slug = "secret-unavailable"
