"""The two message formats: eventrelay's own body and CloudEvents 1.0.

``eventrelay`` is the body of API.md on every destination. ``cloudevents`` is
the event as a CloudEvent (``id`` = event ID, ``source`` = ``eventrelay``,
``type``, ``time`` = received_at, ``partitionkey`` = key, ``data``): binary
mode on webhooks (the data as the body, attributes in ``ce-*`` headers),
structured JSON on brokers. ``data`` is spliced in as stored, never re-encoded.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

import orjson

from app.domain import webhook

Shape = Literal["eventrelay", "binary", "structured"]
SOURCE = "eventrelay"
SPECVERSION = "1.0"
JSON = "application/json"
STRUCTURED = "application/cloudevents+json"
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def shape(format_: str, destination_type: str) -> Shape:
    """How ``format_`` is written for a destination of ``destination_type``."""
    if format_ != "cloudevents":
        return "eventrelay"
    return "binary" if destination_type == "webhook" else "structured"


def body(
    shape_: Shape,
    event_id: str,
    event_type: str,
    received_at: str,
    key: str | None,
    schema_version: int | None,
    data_json: str,
) -> bytes:
    if shape_ == "binary":
        return data_json.encode()
    if shape_ == "eventrelay":
        return webhook.body(event_id, event_type, received_at, key, schema_version, data_json)
    attributes: dict[str, object] = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": SOURCE,
        "type": event_type,
        "time": received_at,
        "datacontenttype": JSON,
    }
    if key is not None:
        attributes["partitionkey"] = key
    if schema_version is not None:
        attributes["schemaversion"] = schema_version
    return orjson.dumps(attributes)[:-1] + b',"data":' + data_json.encode() + b"}"


def content_type(shape_: Shape) -> str:
    return STRUCTURED if shape_ == "structured" else JSON


def binary_headers(
    event_id: str, event_type: str, received_at: str, key: str | None, schema_version: int | None
) -> dict[str, str]:
    """The ``ce-*`` headers of a binary-mode CloudEvent (HTTP binding)."""
    headers = {
        "ce-specversion": SPECVERSION,
        "ce-id": event_id,
        "ce-source": SOURCE,
        "ce-type": event_type,
        "ce-time": received_at,
    }
    if key is not None:
        # The HTTP binding percent-encodes what a header cannot carry as is.
        headers["ce-partitionkey"] = quote(key, safe=_HEADER_SAFE)
    if schema_version is not None:
        headers["ce-schemaversion"] = str(schema_version)
    return headers
