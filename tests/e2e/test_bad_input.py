"""Hostile and broken requests against the real server.

Every one gets a clear 4xx as problem+json, stores nothing, and leaves the
server serving. The server runs with a small payload limit so oversize
bodies are cheap to send.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, assert_problem, event_count, start_module_server

MAX_PAYLOAD = 65_536
RAW_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def shared_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"EVENTRELAY_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD)}
    yield from start_module_server(module_database_url, tmp_path_factory, env=env)


@pytest.fixture
def api(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with shared_server.client() as client:
        yield client


@pytest.fixture
def unchanged(api: httpx.Client) -> Iterator[None]:
    """Nothing is stored by the test, and the server still serves afterwards."""
    before = event_count(api)
    yield
    assert event_count(api) == before
    ok = api.post("/v1/events", json={"type": "still.serving"}, headers=new_key())
    assert ok.status_code == 202, ok.text


def new_key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@dataclass(frozen=True)
class Bad:
    """A body sent as application/json to POST /v1/events and what it must get."""

    id: str
    body: bytes
    status: int | tuple[int, ...]
    locs: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


def _event(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _raw(text: str) -> bytes:
    return text.encode()


BAD_BODIES = [
    # Not JSON at all: 400.
    Bad("empty body", b"", 400),
    Bad("truncated", b'{"type": "order.created",', 400),
    Bad("trailing garbage", b'{"type": "order.created"} x', 400),
    Bad("single quotes", b"{'type': 'order.created'}", 400),
    Bad("NaN", _raw('{"type": "t", "data": NaN}'), 400),
    Bad("Infinity", _raw('{"type": "t", "data": Infinity}'), 400),
    Bad("-Infinity", _raw('{"type": "t", "data": [-Infinity]}'), 400),
    Bad("number beyond a double", _raw('{"type": "t", "data": 1e400}'), 400),
    Bad("integer beyond a double", _raw('{"type": "t", "data": 1' + "0" * 400 + "}"), 400),
    Bad(
        # The escape sends the body down the slow path; the number must still be refused.
        "number beyond a double beside an escape",
        _raw('{"type": "t", "data": ["\\ud83d\\ude00", 1e400]}'),
        400,
    ),
    Bad(
        "integer beyond a double beside an escape",
        _raw('{"type": "t", "data": ["\\ud83d\\ude00", 1' + "0" * 400 + "]}"),
        400,
    ),
    Bad("invalid UTF-8", b'{"type": "t", "data": "\xff\xfe"}', 400),
    Bad("overlong UTF-8", b'{"type": "t", "data": "\xc0\xaf"}', 400),
    Bad("UTF-8 surrogate bytes", b'{"type": "t", "data": "\xed\xa0\x80"}', 400),
    Bad("invalid UTF-8 beside an escape", b'{"type": "t", "data": ["\\u00e9", "\xff"]}', 400),
    Bad("10000 levels deep", _raw('{"type": "t", "data": ' + nested(10_000) + "}"), (400, 422)),
    Bad(
        "10000 levels deep beside an escape",
        _raw('{"type": "t", "data": ' + nested(10_000, '"\\u0000"') + "}"),
        (400, 422),
    ),
    Bad(
        "10000 objects deep",
        _raw('{"type": "t", "data": ' + '{"a":' * 10_000 + "1" + "}" * 10_001),
        (400, 422),
    ),
    # JSON, but not an event object.
    Bad("array", b"[]", (400, 422)),
    Bad("array of events", b'[{"type": "order.created"}]', (400, 422)),
    Bad("string", b'"order.created"', (400, 422)),
    Bad("number", b"42", (400, 422)),
    Bad("null", b"null", (400, 422)),
    Bad("true", b"true", (400, 422)),
    # Invalid fields: 422 with the JSON pointer of each.
    Bad("missing type", _event(data={"total": 42}), 422, ("/type",)),
    Bad("null type", _event(type=None), 422, ("/type",)),
    Bad("numeric type", _event(type=42), 422, ("/type",)),
    Bad("empty type", _event(type=""), 422, ("/type",)),
    Bad("201-character type", _event(type="t" * 201), 422, ("/type",)),
    Bad("type with a space", _event(type="order created"), 422, ("/type",)),
    Bad("type with a star", _event(type="order.*"), 422, ("/type",)),
    Bad("type with a newline", _event(type="order\ncreated"), 422, ("/type",)),
    Bad("non-ASCII type", _event(type="ordér.created"), 422, ("/type",)),
    Bad("201-character key", _event(type="t", key="k" * 201), 422, ("/key",)),
    Bad("numeric key", _event(type="t", key=42), 422, ("/key",)),
    Bad(
        "occurred_at not a time", _event(type="t", occurred_at="yesterday"), 422, ("/occurred_at",)
    ),
    Bad(
        "occurred_at without a zone",
        _event(type="t", occurred_at="2026-11-26T10:00:00"),
        422,
        ("/occurred_at",),
    ),
    Bad(
        "schema_version not a number",
        _event(type="t", schema_version="two"),
        422,
        ("/schema_version",),
    ),
    Bad("schema_version zero", _event(type="t", schema_version=0), 422, ("/schema_version",)),
    # Strings the databases cannot store alike: 422 with where they are.
    Bad("NUL in data", _raw('{"type": "t", "data": {"note": "a\\u0000b"}}'), 422, ("/data/note",)),
    Bad("NUL in key", _raw('{"type": "t", "key": "k\\u0000"}'), 422, ("/key",)),
    Bad("NUL in type", _raw('{"type": "t\\u0000"}'), 422, ("/type",)),
    Bad("lone high surrogate", _raw('{"type": "t", "data": ["ok", "\\ud800"]}'), 422, ("/data/1",)),
    Bad("lone low surrogate", _raw('{"type": "t", "data": {"x": "\\udc00"}}'), 422, ("/data/x",)),
    Bad(
        "surrogates in the wrong order",
        _raw('{"type": "t", "data": {"x": "\\udc00\\ud800"}}'),
        422,
        ("/data/x",),
    ),
    Bad("lone surrogate in key", _raw('{"type": "t", "key": "\\ud800"}'), 422, ("/key",)),
    Bad(
        "NUL in an object key",
        _raw('{"type": "t", "data": {"a/b": {"c\\u0000": 1}}}'),
        422,
        ("/data/a~1b/c\x00",),
    ),
    # Unusable Idempotency-Key headers: 400.
    Bad(
        "256-character Idempotency-Key",
        _event(type="t"),
        400,
        headers={"Idempotency-Key": "k" * 256},
    ),
    Bad("empty Idempotency-Key", _event(type="t"), 400, headers={"Idempotency-Key": ""}),
    Bad(
        "unterminated quoted Idempotency-Key",
        _event(type="t"),
        400,
        headers={"Idempotency-Key": '"abc'},
    ),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("case", BAD_BODIES, ids=[c.id for c in BAD_BODIES])
def test_bad_body_is_refused(api: httpx.Client, case: Bad) -> None:
    headers = {"Content-Type": "application/json", **new_key(), **case.headers}
    response = api.post("/v1/events", content=case.body, headers=headers)
    problem = assert_problem(response, case.status)
    if case.locs:
        locs = [e["loc"] for e in problem.get("errors", [])]
        assert set(case.locs) <= set(locs), problem
    for error in problem.get("errors", []):
        assert error["loc"].startswith("/"), f"not a JSON pointer: {error}"
        assert error["msg"]


@pytest.mark.parametrize("depth", [200, 254, 255, 256, 300, 800])
def test_deep_but_parseable_json_is_never_a_server_error(api: httpx.Client, depth: int) -> None:
    data = json.loads(nested(depth))
    body = json.dumps({"type": "deep.json", "data": data})
    response = api.post(
        "/v1/events",
        content=body,
        headers={"Content-Type": "application/json", **new_key()},
    )
    if response.status_code == 202:
        stored = api.get(f"/v1/events/{response.json()['id']}")
        assert stored.status_code == 200, stored.text
        assert stored.json()["data"] == data
    else:
        assert_problem(response, (400, 413, 422))


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/xml", "application/x-www-form-urlencoded", "json"],
)
@pytest.mark.usefixtures("unchanged")
def test_wrong_content_type_is_415(api: httpx.Client, content_type: str | None) -> None:
    request = api.build_request("POST", "/v1/events", content=_event(type="t"), headers=new_key())
    assert "content-type" not in request.headers
    if content_type is not None:
        request.headers["Content-Type"] = content_type
    assert_problem(api.send(request), 415)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_content_type_variants_are_accepted(api: httpx.Client, content_type: str) -> None:
    response = api.post(
        "/v1/events",
        content=_event(type="t"),
        headers={"Content-Type": content_type, **new_key()},
    )
    assert response.status_code == 202, response.text


def padded_event(size: int) -> bytes:
    """A valid event body of exactly ``size`` bytes."""
    skeleton = _event(type="padded.event", data="")
    return _event(type="padded.event", data="x" * (size - len(skeleton)))


def test_body_of_exactly_the_limit_is_accepted(api: httpx.Client) -> None:
    body = padded_event(MAX_PAYLOAD)
    assert len(body) == MAX_PAYLOAD
    response = api.post(
        "/v1/events", content=body, headers={"Content-Type": "application/json", **new_key()}
    )
    assert response.status_code == 202, response.text


@pytest.mark.usefixtures("unchanged")
def test_body_over_the_limit_is_413(api: httpx.Client) -> None:
    body = padded_event(MAX_PAYLOAD + 1)
    response = api.post(
        "/v1/events", content=body, headers={"Content-Type": "application/json", **new_key()}
    )
    assert_problem(response, 413)


@pytest.mark.usefixtures("unchanged")
def test_chunked_body_over_the_limit_is_413(api: httpx.Client) -> None:
    body = padded_event(4 * MAX_PAYLOAD)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = api.post(
        "/v1/events", content=chunks(), headers={"Content-Type": "application/json", **new_key()}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


def raw_exchange(port: int, head: bytes, timeout: float = RAW_TIMEOUT) -> bytes:
    """Send ``head`` on a fresh connection; read one response until it is complete or EOF."""
    deadline = time.monotonic() + timeout
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
            header, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in header.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
    return received


@pytest.mark.usefixtures("unchanged")
def test_huge_declared_length_is_refused_without_reading_it(shared_server: ServerProcess) -> None:
    head = (
        "POST /v1/events HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{shared_server.port}\r\n"
        f"Authorization: Bearer {shared_server.admin_token}\r\n"
        "Content-Type: application/json\r\n"
        f"Idempotency-Key: {uuid.uuid4().hex}\r\n"
        f"Content-Length: {10**12}\r\n"
        "\r\n"
        '{"type": "t", "data": "'
    ).encode()
    started = time.monotonic()
    answer = raw_exchange(shared_server.port, head)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"application/problem+json" in answer.split(b"\r\n\r\n", 1)[0].lower()
    assert elapsed < RAW_TIMEOUT - 1, f"took {elapsed:.1f} s"


@pytest.mark.parametrize("size", [16 * 1024, 64 * 1024])
@pytest.mark.usefixtures("unchanged")
def test_very_long_unrelated_header_is_never_a_server_error(
    shared_server: ServerProcess, size: int
) -> None:
    headers = {"X-Padding": "p" * size, "Content-Type": "application/json", **new_key()}
    with shared_server.client() as client:
        try:
            response = client.post("/v1/events", content=b"[]", headers=headers)
        except httpx.TransportError:
            return  # refusing the connection outright is acceptable; crashing is not
    # The body is not an event, so a normal answer is a 4xx too.
    assert 400 <= response.status_code < 500, response.text[:300]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"order": "sideways"},
        {"cursor": "not a cursor"},
        {"cursor": "!!!!"},
        {"type": "t" * 201},
    ],
)
def test_bad_list_parameters_are_422(api: httpx.Client, params: dict[str, str]) -> None:
    problem = assert_problem(api.get("/v1/events", params=params), 422)
    assert problem.get("errors"), problem


@pytest.mark.parametrize("limit", ["1", "500"])
def test_limit_bounds_are_accepted(api: httpx.Client, limit: str) -> None:
    response = api.get("/v1/events", params={"limit": limit})
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) <= int(limit)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/events/evt_01JD0000000000000000000000", 404),
        ("GET", "/v1/events/not-an-id", 404),
        ("GET", "/v1/nothing-here", 404),
        ("PUT", "/v1/events", 405),
        ("DELETE", "/v1/stats", 405),
    ],
)
def test_unknown_resources_and_methods_are_problems(
    api: httpx.Client, method: str, path: str, status: int
) -> None:
    assert_problem(api.request(method, path), status)
