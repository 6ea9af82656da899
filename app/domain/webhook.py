"""The request a subscriber receives: body bytes and headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from app.domain.signing import Key, signature_header

_OURS = frozenset(
    {
        "content-type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "user-agent",
        "traceparent",
        "tracestate",
    }
)


def body(
    event_id: str,
    event_type: str,
    received_at: str,
    key: str | None,
    schema_version: int | None,
    data_json: str,
) -> bytes:
    """The JSON body; ``data`` is spliced in as stored, never re-encoded."""
    head = orjson.dumps(
        {
            "id": event_id,
            "type": event_type,
            "timestamp": received_at,
            "key": key,
            "schema_version": schema_version,
        }
    )
    return head[:-1] + b',"data":' + data_json.encode() + b"}"


def headers(
    *,
    event_id: str,
    timestamp: int,
    payload: bytes,
    keys: Sequence[Key],
    user_agent: str,
    custom: Mapping[str, str],
    content_type: str = "application/json",
    trace: Mapping[str, str] = {},  # noqa: B006 (never changed)
) -> dict[str, str]:
    """The request's headers; ``trace`` is the attempt's (app.domain.tracecontext.headers)."""
    # Ours win whatever the spelling of a custom header (HTTP names are case-insensitive).
    result = {k: v for k, v in custom.items() if k.lower() not in _OURS} if custom else {}
    result["content-type"] = content_type
    result["webhook-id"] = event_id
    result["webhook-timestamp"] = str(timestamp)
    result["webhook-signature"] = signature_header(keys, event_id, timestamp, payload)
    result["user-agent"] = user_agent
    if trace:
        result.update(trace)
    return result
