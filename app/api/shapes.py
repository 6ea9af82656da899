"""Turning store records into the JSON shapes of API.md."""

from __future__ import annotations

import orjson

from app.domain.events import rfc3339
from app.services.dlq import Attempt, DeadLetter, StoredEvent


def event_summary(event: StoredEvent) -> dict[str, object]:
    return {
        "id": event.id,
        "type": event.type,
        "key": event.key,
        "data": orjson.loads(event.data_json),
        "schema_version": event.schema_version,
        "occurred_at": rfc3339(event.occurred_at),
        "received_at": rfc3339(event.received_at),
    }


def attempt(a: Attempt) -> dict[str, object]:
    return {
        "attempt": a.attempt,
        "started_at": rfc3339(a.started_at),
        "duration_ms": a.duration_ms,
        "status_code": a.status_code,
        "error": a.error,
        "response_body": a.response_body,
        "request_headers": a.request_headers,
    }


def dead_letter(dead: DeadLetter) -> dict[str, object]:
    return {
        "id": dead.id,
        "event_id": dead.event_id,
        "subscription_id": dead.subscription_id,
        "event_type": dead.event_type,
        "key": dead.key,
        "attempts": dead.attempts,
        "last_status_code": dead.last_status_code,
        "last_error": dead.last_error,
        "dead_lettered_at": rfc3339(dead.dead_lettered_at),
    }
