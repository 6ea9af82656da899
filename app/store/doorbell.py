"""SQLite's NOTIFY: wake a delivery worker in another process within a millisecond.

PostgreSQL wakes workers with ``NOTIFY`` (:mod:`app.store.notify`). A SQLite
file has no such channel, so a worker of its own (``eventrelay worker``
beside ``eventrelay serve --no-worker``) would learn of new deliveries only
when it polls. The doorbell is a datagram socket named after the file: the
worker on that file listens on it, and an API process on the same file sends
it one datagram after each commit that makes deliveries due (the payload is
``NOTIFY``'s: empty, or :data:`app.store.notify.CHANGED` and a subscription
ID). The name is in Linux's abstract socket namespace, so there is no file to
leave behind; elsewhere there is no doorbell and the worker polls.

A ring is a hint, as a ``NOTIFY`` is: the worker claims from the database,
and one lost (no worker listening, its buffer full) only means the next poll
finds the work. Any local process can ring (wake the worker, or have it read
a subscription's settings again), and that is all a ring can do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Callable

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

# Datagrams read per wake of the listener's loop; the rest wait for the next.
_READ_AT_ONCE = 64
_MAX_PAYLOAD = 512


def address(url: str) -> bytes | None:
    """The doorbell's address for a SQLite URL (None: in memory, or not Linux)."""
    parsed = make_url(url)
    database = parsed.database
    if not sys.platform.startswith("linux") or not database or database == ":memory:":
        return None
    if parsed.query.get("mode") == "memory":
        return None
    database = database.removeprefix("file:")
    digest = hashlib.sha256(os.path.realpath(database).encode()).hexdigest()[:32]
    return b"\0eventrelay-doorbell-" + digest.encode()


class Doorbell:
    """The ringing side, for an API process: :meth:`ring` never blocks or raises."""

    def __init__(self, url: str) -> None:
        self._address = address(url)
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    def ring(self, payload: str = "") -> None:
        if self._socket is None or self._address is None:
            return
        # No worker listening, or its buffer full: it polls, as without a bell.
        with contextlib.suppress(OSError):
            self._socket.sendto(payload.encode()[:_MAX_PAYLOAD], self._address)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class DoorbellListener:
    """The worker's side, shaped like :class:`app.store.notify.Listener`."""

    def __init__(self, url: str, on_notify: Callable[[str], None]) -> None:
        self._address = address(url)
        self._on_notify = on_notify
        self._socket: socket.socket | None = None

    @property
    def listening(self) -> bool:
        return self._socket is not None

    def start(self) -> None:
        if self._address is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._address)
        except OSError as exc:
            # Another worker on this file has it (one worker process per
            # SQLite file): this one polls.
            sock.close()
            log.warning("SQLite doorbell unavailable (%s); polling for new deliveries", exc)
            return
        sock.setblocking(False)
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    async def stop(self) -> None:
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def _read(self) -> None:
        assert self._socket is not None
        payloads = set()
        for _ in range(_READ_AT_ONCE):
            try:
                payloads.add(self._socket.recv(_MAX_PAYLOAD).decode(errors="replace"))
            except (BlockingIOError, InterruptedError):
                break
        for payload in payloads:
            self._on_notify(payload)
