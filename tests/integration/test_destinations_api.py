"""Subscriptions with a ``destination`` (API-v2 "Destinations"): shapes, the
422s with their JSON pointers, credentials that are never shown, the SSRF rule
for broker hosts, and that creating one does not connect."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from app.settings import Settings
from app.store import schema
from app.store.database import open_database
from tests.integration.support import assert_problem, locs, running

AMQP = "amqp://relay:pa55w0rd@8.8.8.8:5672/vhost"
NATS = "nats://8.8.4.4:4222"
REDIS = "rediss://:r3dis-pw@8.8.8.8:6380/2"

DESTINATIONS: list[dict[str, Any]] = [
    {"type": "rabbitmq", "url": AMQP, "exchange": "events", "routing_key": "{tenant_id}.{type}"},
    {"type": "rabbitmq", "url": AMQP, "exchange": "", "routing_key": "orders"},
    {"type": "nats", "url": NATS, "subject": "events.{type}.{key}"},
    {"type": "redis", "url": REDIS, "stream": "events:{type}", "maxlen": 10000},
    {"type": "redis", "url": "redis://8.8.8.8", "stream": "s"},
]


async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/subscriptions", json=body)


def masked(destination: dict[str, Any]) -> dict[str, Any]:
    url = destination["url"].replace("pa55w0rd", "***").replace("r3dis-pw", "***")
    return destination | {"url": url}


async def test_each_type_is_created_and_shown_without_its_password(
    client: httpx.AsyncClient,
) -> None:
    for destination in DESTINATIONS:
        response = await post(client, {"destination": destination, "format": "cloudevents"})
        assert response.status_code == 201, response.text
        created = response.json()
        expected = masked(destination)
        if destination["type"] == "redis":
            expected.setdefault("maxlen", None)
        assert created["destination"] == expected
        assert created["url"] is None
        assert created["format"] == "cloudevents"
        shown = (await client.get(f"/v1/subscriptions/{created['id']}")).json()
        assert shown["destination"] == expected
        listed = (await client.get("/v1/subscriptions")).text
        assert "pa55w0rd" not in listed
        assert "r3dis-pw" not in listed


async def test_url_stays_the_short_form_of_a_webhook(client: httpx.AsyncClient) -> None:
    plain = (await post(client, {"url": "https://8.8.8.8/hooks"})).json()
    assert plain["url"] == "https://8.8.8.8/hooks"
    assert plain["destination"] == {"type": "webhook", "url": "https://8.8.8.8/hooks"}
    assert plain["format"] == "eventrelay"
    long_form = await post(
        client, {"destination": {"type": "webhook", "url": "https://8.8.8.8/other"}}
    )
    assert long_form.status_code == 201, long_form.text
    assert long_form.json()["url"] == "https://8.8.8.8/other"


async def test_the_broker_url_is_stored_apart_from_the_settings(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    created = (await post(client, {"destination": DESTINATIONS[0]})).json()
    db = open_database(settings.database_url)
    try:
        s = schema.subscriptions
        async with db.read() as conn:
            row = (await conn.execute(select(s).where(s.c.id == created["id"]))).one()
    finally:
        await db.dispose()
    assert row.destination_url == AMQP
    assert "pa55w0rd" not in row.url
    assert "pa55w0rd" not in row.destination


BAD: list[tuple[dict[str, Any], str]] = [
    ({"destination": "amqp://x"}, "/destination"),
    ({"destination": {"type": "kafka", "url": "kafka://x"}}, "/destination/type"),
    ({"destination": {"url": AMQP, "exchange": "", "routing_key": "k"}}, "/destination/type"),
    (
        {"destination": {"type": "rabbitmq", "url": AMQP, "routing_key": "k"}},
        "/destination/exchange",
    ),
    (
        {"destination": {"type": "rabbitmq", "url": AMQP, "exchange": ""}},
        "/destination/routing_key",
    ),
    (
        {"destination": {"type": "rabbitmq", "url": NATS, "exchange": "", "routing_key": "k"}},
        "/destination/url",
    ),
    (
        {"destination": {"type": "nats", "url": NATS, "subject": "a.{customer}"}},
        "/destination/subject",
    ),
    (
        {"destination": {"type": "nats", "url": NATS, "subject": "a.{type!r}"}},
        "/destination/subject",
    ),
    ({"destination": {"type": "nats", "url": NATS, "subject": "a.{type"}}, "/destination/subject"),
    ({"destination": {"type": "nats", "url": NATS, "subject": ""}}, "/destination/subject"),
    ({"destination": {"type": "nats", "url": "nats://", "subject": "a"}}, "/destination/url"),
    (
        {"destination": {"type": "redis", "url": REDIS, "stream": "s", "maxlen": 0}},
        "/destination/maxlen",
    ),
    (
        {"destination": {"type": "redis", "url": REDIS, "stream": "s", "extra": 1}},
        "/destination/extra",
    ),
    ({"destination": {"type": "webhook", "url": "ftp://8.8.8.8/"}}, "/destination/url"),
    ({"url": "https://8.8.8.8/", "destination": DESTINATIONS[0]}, "/destination"),
    ({"destination": DESTINATIONS[0], "format": "avro"}, "/format"),
]


async def test_a_malformed_destination_is_422_with_the_pointer(client: httpx.AsyncClient) -> None:
    for body, pointer in BAD:
        response = await post(client, body)
        assert pointer in locs(assert_problem(response, 422)), (body, response.text)
        assert "pa55w0rd" not in response.text
        assert "r3dis-pw" not in response.text
    assert (await client.get("/v1/subscriptions")).json()["items"] == []


async def test_patch_changes_the_destination_and_the_format(client: httpx.AsyncClient) -> None:
    sub = (await post(client, {"url": "https://8.8.8.8/hooks"})).json()
    path = f"/v1/subscriptions/{sub['id']}"
    response = await client.patch(path, json={"destination": DESTINATIONS[2]})
    assert response.status_code == 200, response.text
    assert response.json()["destination"] == DESTINATIONS[2]
    assert response.json()["url"] is None
    response = await client.patch(path, json={"format": "cloudevents"})
    assert (response.json()["format"], response.json()["destination"]["type"]) == (
        "cloudevents",
        "nats",
    )
    bad = await client.patch(path, json={"destination": {"type": "nats", "url": NATS}})
    assert locs(assert_problem(bad, 422)) == ["/destination/subject"]
    for field in ("destination", "format"):
        refused = await client.patch(path, json={field: None})
        assert locs(assert_problem(refused, 422)) == [f"/{field}"]
    back = await client.patch(path, json={"url": "https://8.8.8.8/again"})
    assert back.json()["destination"] == {"type": "webhook", "url": "https://8.8.8.8/again"}


async def test_private_broker_hosts_are_refused_unless_allowed(settings: Settings) -> None:
    refused = [
        {
            "type": "rabbitmq",
            "url": "amqp://guest:guest@127.0.0.1/",
            "exchange": "",
            "routing_key": "k",
        },
        {"type": "nats", "url": "nats://10.0.0.7:4222", "subject": "s"},
        {"type": "redis", "url": "redis://localhost:6379", "stream": "s"},
        {"type": "webhook", "url": "http://192.168.1.1/hooks"},
    ]
    async with running(settings, allow_private_targets=False) as client:
        for destination in refused:
            response = await post(client, {"destination": destination})
            assert locs(assert_problem(response, 422)) == ["/destination/url"], destination
    async with running(settings, allow_private_targets=True) as client:
        for destination in refused:
            assert (await post(client, {"destination": destination})).status_code == 201


async def test_creating_a_subscription_does_not_connect(client: httpx.AsyncClient) -> None:
    connections = 0

    async def count(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for scheme, fields in (
            ("amqp", {"type": "rabbitmq", "exchange": "", "routing_key": "k"}),
            ("nats", {"type": "nats", "subject": "s"}),
            ("redis", {"type": "redis", "stream": "s"}),
        ):
            destination = fields | {"url": f"{scheme}://127.0.0.1:{port}"}
            assert (await post(client, {"destination": destination})).status_code == 201
    finally:
        server.close()
        await server.wait_closed()
    assert connections == 0


MISSING_LIBRARY = """
import asyncio, sys
for name in sys.argv[2].split(","):
    sys.modules[name] = None  # as if the package were not installed
import httpx
from app.main import create_app
from app.settings import Settings

async def main() -> None:
    settings = Settings(
        database_url=sys.argv[1], admin_token="er_test_admin_token_0123456789",
        allow_private_targets=True, log_format="text",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": "Bearer er_test_admin_token_0123456789"}
        client = httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers)
        async with client as c:
            for body in sys.stdin.read().splitlines():
                r = await c.post("/v1/subscriptions", content=body,
                                 headers={"content-type": "application/json"})
                print(r.status_code, r.text)

asyncio.run(main())
"""


def test_a_type_whose_library_is_missing_is_refused_at_create_time(
    sqlite_template: Path, tmp_path: Path
) -> None:
    database = tmp_path / "eventrelay.db"
    shutil.copyfile(sqlite_template, database)
    bodies = [
        {"destination": {"type": "rabbitmq", "url": AMQP, "exchange": "", "routing_key": "k"}},
        {"destination": {"type": "nats", "url": NATS, "subject": "s"}},
        {"destination": {"type": "redis", "url": REDIS, "stream": "s"}},
        {"url": "https://8.8.8.8/hooks"},
    ]
    done = subprocess.run(
        [sys.executable, "-c", MISSING_LIBRARY, f"sqlite+aiosqlite:///{database}", "aio_pika,nats"],
        input="\n".join(json.dumps(b) for b in bodies),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answers = [line.split(" ", 1) for line in done.stdout.splitlines()]
    assert [status for status, _ in answers] == ["422", "422", "201", "201"], done.stdout
    rabbit, nats = (json.loads(body) for _, body in answers[:2])
    assert "aio-pika is not installed" in rabbit["detail"]
    assert "eventrelay[brokers]" in rabbit["detail"]
    assert rabbit["errors"] == [
        {"loc": "/destination/type", "msg": "rabbitmq is not available here"}
    ]
    assert "nats-py is not installed" in nats["detail"]
