"""A fast local webhook receiver for ``bench/delivery.py``.

    .venv/bin/python bench/receiver.py [--host 127.0.0.1] [--port 0]

A raw asyncio protocol on uvloop with the httptools parser (what uvicorn uses),
HTTP/1.1 keep-alive: it answers every ``POST`` with ``200`` and an empty body
as soon as the request is complete, and records the ``webhook-id`` header and
the arrival time (``time.time()``, the same clock the benchmark reads) of each
request. Run it in its own process; it prints ``READY <port>`` on stdout once
it listens.

Control endpoints (not counted):

* ``GET /_stats`` - ``{"count", "unique", "first", "last", "target", "target_at"}``:
  requests received, distinct ``webhook-id`` values, the first and last arrival
  times, and when ``unique`` reached ``target`` (null until then);
* ``POST /_reset?target=N`` - forget everything; ``target_at`` is stamped when
  ``unique`` reaches ``N``;
* ``GET /_arrivals`` - ``{"ids": [...], "times": [...]}`` in arrival order,
  duplicates included;
* ``GET /_cpu`` - this process's CPU seconds (user + system).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from urllib.parse import parse_qs

import httptools
import orjson
import uvloop

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class State:
    """What the receiver has seen since the last reset."""

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, target: int) -> None:
        self.ids: list[bytes] = []
        self.times: list[float] = []
        self.seen: set[bytes] = set()
        self.target = target
        self.target_at: float | None = None

    def record(self, webhook_id: bytes, now: float) -> None:
        self.ids.append(webhook_id)
        self.times.append(now)
        if webhook_id not in self.seen:
            self.seen.add(webhook_id)
            if self.target and self.target_at is None and len(self.seen) >= self.target:
                self.target_at = now

    def stats(self) -> bytes:
        return orjson.dumps(
            {
                "count": len(self.ids),
                "unique": len(self.seen),
                "first": self.times[0] if self.times else None,
                "last": self.times[-1] if self.times else None,
                "target": self.target,
                "target_at": self.target_at,
            }
        )

    def arrivals(self) -> bytes:
        return orjson.dumps({"ids": [i.decode() for i in self.ids], "times": self.times})


def _json(body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        len(body),
        b"" if keep_alive else b"Connection: close\r\n",
    )
    return head + body


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class Receiver(asyncio.Protocol):
    __slots__ = ("_state", "_transport", "_parser", "_url", "_webhook_id")

    def __init__(self, state: State) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._webhook_id = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop sets TCP_NODELAY on TCP transports

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._webhook_id = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 10 and name.lower() == b"webhook-id":
            self._webhook_id = value

    def on_message_complete(self) -> None:
        now = time.time()
        transport = self._transport
        assert transport is not None
        keep_alive = self._parser.should_keep_alive()
        if self._url.startswith(b"/_"):
            transport.write(_json(self._control(), keep_alive))
        else:
            self._state.record(self._webhook_id, now)
            transport.write(_OK if keep_alive else _OK_CLOSE)
        if not keep_alive:
            transport.close()

    def _control(self) -> bytes:
        path, _, query = self._url.decode("latin-1").partition("?")
        if path == "/_stats":
            return self._state.stats()
        if path == "/_reset":
            target = int(parse_qs(query).get("target", ["0"])[0])
            self._state.reset(target)
            return b"{}"
        if path == "/_arrivals":
            return self._state.arrivals()
        if path == "/_cpu":
            return orjson.dumps({"cpu_seconds": _cpu_seconds()})
        return b'{"error": "unknown control path"}'


async def serve(host: str, port: int) -> None:
    state = State()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(state), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
