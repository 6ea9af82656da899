"""One client per broker URL: opened on first use, reopened with backoff.

A broker that is down or refuses the connection makes attempts fail at once
with the last reason (the delivery is retried on its schedule, the worker
goes on); the next connection is tried after a delay that doubles from
:data:`MIN_BACKOFF` up to :data:`MAX_BACKOFF` and resets on success. Unless
private targets are allowed, every address the host resolves to is checked
before each connection (as webhooks are). Reasons never show the URL's
credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from app.domain.destinations import hide_secrets, masked_url
from app.domain.ssrf import forbidden_reason

log = logging.getLogger(__name__)

C = TypeVar("C")
MIN_BACKOFF = 0.2
MAX_BACKOFF = 30.0


class Unavailable(Exception):
    """No connection to the broker now; the message says why."""


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1000]


class Link(Generic[C]):
    def __init__(
        self,
        url: str,
        *,
        allow_private: bool,
        open_client: Callable[[], Awaitable[C]],
        close_client: Callable[[C], Awaitable[object]],
        usable: Callable[[C], bool],
    ) -> None:
        self.url = url
        self._allow_private = allow_private
        self._open = open_client
        self._close = close_client
        self._usable = usable
        self._client: C | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""

    def hide(self, text: str) -> str:
        return hide_secrets(text, self.url)

    async def client(self, timeout_s: float) -> C:
        """The open client, connecting first if needed (Unavailable when it cannot)."""
        client = self._client
        if client is not None and self._usable(client):
            return client
        async with self._lock:
            client = self._client
            if client is not None and self._usable(client):
                return client
            if client is not None:
                await self.lost(client)
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise Unavailable(f"{self._last_error} (reconnecting in {wait:.1f} s)")
            try:
                await self._check_host()
                client = await asyncio.wait_for(self._open(), timeout_s)
            except Exception as exc:
                self._failed(exc)
                raise Unavailable(self._last_error) from None
            if self._failures:
                log.info("connected to the broker again", extra={"broker": masked_url(self.url)})
            self._failures, self._client = 0, client
            return client

    async def lost(self, client: C) -> None:
        """``client`` is broken: close it; the next attempt connects anew."""
        if self._client is client:
            self._client = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._close(client), 5)

    async def close(self) -> None:
        if self._client is not None:
            await self.lost(self._client)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(MAX_BACKOFF, MIN_BACKOFF * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        reason = "timed out connecting" if isinstance(exc, TimeoutError) else describe(exc)
        self._last_error = self.hide(f"cannot connect to the broker: {reason}")
        log.warning(
            "cannot connect to the broker; next try in %.1f s",
            delay,
            extra={"broker": masked_url(self.url), "error": self._last_error},
        )

    async def _check_host(self) -> None:
        if self._allow_private:
            return
        host = urlsplit(self.url).hostname or ""
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        for info in infos:
            reason = forbidden_reason(str(info[4][0]))
            if reason is not None:
                raise Unavailable(f"{host} resolves to a refused address: {reason}")
