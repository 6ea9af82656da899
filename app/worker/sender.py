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
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import istr

from app.domain.ssrf import forbidden_reason
from app.worker.config import WorkerConfig
from app.worker.protocol import Message, SenderFactory, SendResult, answered, failed

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


class WebhookRequest(aiohttp.ClientRequest):
    """aiohttp's request without its automatic ``Accept`` and ``Accept-Encoding``
    headers: a webhook carries the attempt's headers (``User-Agent`` among them)
    and ``Host``, nothing else. This costs nothing per request, where the
    session's ``skip_auto_headers`` builds and merges two header sets per request
    (about a tenth of aiohttp's CPU per request here, BENCHMARKS.md)."""

    DEFAULT_HEADERS: dict[istr, str] = {}


class HttpSender:
    """One aiohttp session for the worker's lifetime (build inside the event loop)."""

    def __init__(self, *, allow_private: bool, max_connections: int = 512) -> None:
        self._allow_private = allow_private
        self._by_destination: dict[str, HttpConnection] = {}
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            resolver=None if allow_private else GuardedResolver(),
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, request_class=WebhookRequest
        )

    def connection(self, destination: str) -> HttpConnection:
        connection = self._by_destination.get(destination)
        if connection is None:
            refusal = None if self._allow_private else _refused_literal(destination)
            connection = HttpConnection(self._session, destination, refusal)
            self._by_destination[destination] = connection
        return connection

    async def close(self) -> None:
        await self._session.close()


class HttpConnection:
    """One webhook URL (a :class:`~app.worker.protocol.Connection`) on the sender's pool."""

    __slots__ = ("_refusal", "_session", "url")

    def __init__(self, session: aiohttp.ClientSession, url: str, refusal: str | None) -> None:
        self._session = session
        self.url = url
        self._refusal = refusal

    async def send(self, message: Message) -> SendResult:
        started = time.perf_counter()
        if self._refusal is not None:
            return _failed(started, self._refusal)
        try:
            async with self._session.post(
                self.url,
                data=message.payload,
                headers=message.headers,
                allow_redirects=False,
                timeout=_timeout(message.timeout_s),
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BODY)
                outcome = answered(response.status, response.headers.get("Retry-After"))
                text = _storable_text(body)
        except TimeoutError:
            return _failed(started, f"timed out after {message.timeout_s * 1000:.0f} ms")
        except ForbiddenAddress as exc:
            return _failed(started, str(exc))
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return _failed(started, _describe(exc))
        return SendResult(outcome, _elapsed_ms(started), text)


def _refused_literal(url: str) -> str | None:
    """Why an IP-literal host may not be reached (aiohttp skips the resolver for
    those, so they are checked here), or None."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError as exc:
        return _describe(exc)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    reason = forbidden_reason(host)
    return None if reason is None else f"refused address: {reason}"


def _failed(started: float, error: str) -> SendResult:
    return failed(_elapsed_ms(started), error)


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
