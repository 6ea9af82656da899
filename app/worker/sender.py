"""The HTTP sender: webhook requests over aiohttp (a :class:`~app.worker.protocol.Sender`).

aiohttp rather than httpx on this path: at 64 concurrent requests httpx's own
connection pool managed about a twentieth of aiohttp's throughput here
(BENCHMARKS.md). One session and connection pool serve every destination; a
destination's :class:`HttpConnection` is its URL bound to that session.
Redirects are not followed; the response body is kept up to 4 KiB. Unless
private targets are allowed, every address a host resolves to is checked at
connect time and the connection goes only to a checked address.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from app.domain.retry import Outcome
from app.domain.ssrf import forbidden_reason
from app.worker.config import WorkerConfig
from app.worker.protocol import Message, SenderFactory, SendResult, failed

MAX_RESPONSE_BODY = 4096


class ForbiddenAddress(OSError):
    """The target resolved to an address webhooks may not reach."""


class GuardedResolver(AbstractResolver):
    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = forbidden_reason(result["host"])
            if reason is not None:
                raise ForbiddenAddress(f"{host} resolves to a refused address: {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class HttpSender:
    """One aiohttp session for the worker's lifetime (build inside the event loop)."""

    def __init__(self, *, allow_private: bool, max_connections: int = 512) -> None:
        self._allow_private = allow_private
        self._connections: dict[str, HttpConnection] = {}
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            resolver=None if allow_private else GuardedResolver(),
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    def connection(self, destination: str) -> HttpConnection:
        connection = self._connections.get(destination)
        if connection is None:
            connection = self._connections[destination] = HttpConnection(self, destination)
        return connection

    async def close(self) -> None:
        await self._session.close()

    async def send(
        self, url: str, payload: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> SendResult:
        started = time.perf_counter()
        try:
            self._check_literal(url)
            async with self._session.post(
                url,
                data=payload,
                headers=headers,
                allow_redirects=False,
                timeout=_timeout(timeout_s),
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BODY)
                outcome = Outcome(
                    status_code=response.status,
                    retry_after=response.headers.get("Retry-After"),
                )
                text = _storable_text(body)
        except TimeoutError:
            return self._failed(started, f"timed out after {timeout_s * 1000:.0f} ms")
        except ForbiddenAddress as exc:
            return self._failed(started, str(exc))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return self._failed(started, _describe(exc))
        return SendResult(outcome, _elapsed_ms(started), text)

    def _check_literal(self, url: str) -> None:
        # aiohttp skips the resolver for IP literals, so check those here.
        if self._allow_private:
            return
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        reason = forbidden_reason(host)
        if reason is not None:
            raise ForbiddenAddress(f"refused address: {reason}")

    @staticmethod
    def _failed(started: float, error: str) -> SendResult:
        return failed(_elapsed_ms(started), error)


class HttpConnection:
    """One webhook URL (a :class:`~app.worker.protocol.Connection`); the pool is the sender's."""

    __slots__ = ("_sender", "url")

    def __init__(self, sender: HttpSender, url: str) -> None:
        self._sender = sender
        self.url = url

    async def send(self, message: Message) -> SendResult:
        return await self._sender.send(
            self.url, message.payload, message.headers, message.timeout_s
        )


@functools.lru_cache(maxsize=256)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _describe(exc: Any) -> str:
    cause = getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(cause, ForbiddenAddress):
        return str(cause)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:1000]


def _storable_text(body: bytes) -> str:
    # Both databases must be able to hold it: no NUL, no lone surrogates.
    return body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def http_senders(config: WorkerConfig) -> SenderFactory:
    """The worker's default sender: one :class:`HttpSender` sized to its slots."""
    return functools.partial(
        HttpSender,
        allow_private=config.allow_private_targets,
        max_connections=config.concurrency,
    )
