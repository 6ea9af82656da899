"""PostgreSQL going away under a running server: 503 while it is gone, never a
202, and recovery without a restart once it is back.

Two kinds of outage: the network link cut (the server reaches PostgreSQL
through a loopback TCP proxy that the test closes, so connections are reset
and new ones refused), and the database itself refusing connections
(``ALLOW_CONNECTIONS false`` plus ``pg_terminate_backend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol

import httpx
import pytest

from tests.conftest import PG_HOST, PG_PORT, pg_admin
from tests.e2e.conftest import ServerFactory, assert_problem, free_port, pg_database_name

RECOVERY_DEADLINE_SECONDS = 20.0
OUTAGE_BURST = 10


class Outage(Protocol):
    def cut(self) -> None: ...

    def restore(self) -> None: ...


class ClosedDatabase:
    """The database refuses new connections and its open ones are terminated."""

    def __init__(self, database: str) -> None:
        self.database = database

    def cut(self) -> None:
        pg_admin(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
        pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.database}' AND pid <> pg_backend_pid()"
        )

    def restore(self) -> None:
        pg_admin(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')


class CutLink:
    """A loopback TCP proxy to PostgreSQL, on its own thread; ``cut`` resets every
    proxied connection and stops listening, ``restore`` listens again."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._listener: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> CutLink:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def cut(self) -> None:
        self._run(self._cut())

    def restore(self) -> None:
        self._run(self._listen())

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._listener = await asyncio.start_server(
            self._proxy, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for writer in list(self._links):
            writer.transport.abort()

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(PG_HOST, PG_PORT)
        except OSError:
            client_w.transport.abort()
            return
        self._links |= {client_w, server_w}
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            for writer in (client_w, server_w):
                self._links.discard(writer)
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def event(n: int) -> dict[str, object]:
    return {"type": "outage.test", "data": {"n": n}}


async def post(client: httpx.AsyncClient, body: dict[str, object], key: str) -> httpx.Response:
    return await client.post("/v1/events", json=body, headers={"Idempotency-Key": key})


@pytest.fixture(params=["link cut", "database closed"])
def outage(request: pytest.FixtureRequest, database_url: str) -> Iterator[tuple[str, Outage]]:
    """The URL the server should use and the outage to inflict on it."""
    if request.param == "database closed":
        yield database_url, ClosedDatabase(pg_database_name(database_url))
        return
    with CutLink() as link:
        proxied = database_url.replace(f"@{PG_HOST}:{PG_PORT}/", f"@127.0.0.1:{link.port}/")
        assert proxied != database_url
        yield proxied, link


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_database_outage_is_503_and_recovers(
    outage: tuple[str, Outage], server_factory: ServerFactory
) -> None:
    # ``outage`` comes first so that the server is stopped before the proxy goes.
    url, cause = outage
    server = await asyncio.to_thread(server_factory, url)
    async with server.async_client() as client:
        before = await post(client, event(0), "before-outage")
        assert before.status_code == 202, before.text

        await asyncio.to_thread(cause.cut)
        try:
            outage_keys = [f"outage-{uuid.uuid4().hex}" for _ in range(OUTAGE_BURST)]
            # One at a time (the first meets a pool of dead connections), then all at once.
            first = await post(client, event(1), outage_keys[0])
            assert_problem(first, 503)
            burst = await asyncio.gather(
                *(post(client, event(i + 1), k) for i, k in enumerate(outage_keys))
            )
            for response in burst:
                assert_problem(response, 503)
            assert_problem(await post(client, event(0), "before-outage"), 503)
            assert_problem(await client.get("/readyz"), 503)
            assert_problem(await client.get("/v1/stats"), 503)
            assert (await client.get("/healthz")).status_code == 200
            assert server.running
        finally:
            await asyncio.to_thread(cause.restore)

        deadline = time.monotonic() + RECOVERY_DEADLINE_SECONDS
        while True:
            answer = await post(client, event(99), "after-outage")
            if answer.status_code == 202:
                break
            assert_problem(answer, 503)
            assert time.monotonic() < deadline, "no recovery after the database came back"
            await asyncio.sleep(0.1)
        assert "idempotent-replayed" not in answer.headers
        assert (await client.get("/readyz")).status_code == 200

        # Nothing answered 503 was stored: each of those keys is still a first use.
        for i, key in enumerate(outage_keys):
            again = await post(client, event(i + 1), key)
            assert again.status_code == 202, again.text
            assert "idempotent-replayed" not in again.headers
        replay = await post(client, event(0), "before-outage")
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["id"] == before.json()["id"]
        stats = await client.get("/v1/stats")
        assert stats.json()["events"] == 2 + OUTAGE_BURST
