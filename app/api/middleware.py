"""Per-request bookkeeping in one pass: the request ID, the HTTP metrics and
the requests in flight.

The request ID is taken from ``X-Request-ID`` or made up, echoed back, and put
on every log line of the request. The same pass times the request and notes
its status and sizes for :class:`app.api.http_metrics.HttpMetrics`: one
middleware layer and one ``send`` wrapper instead of two, on every request.
With an embedded delivery worker it also counts the request in flight until
it is answered, so that the worker's thread steps aside for it
(:mod:`app.precedence`).
"""

from __future__ import annotations

import itertools
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.http_metrics import CONTENT_LENGTH, HttpMetrics, content_length
from app.logging import request_id
from app.precedence import RequestsFirst

HEADER = b"x-request-id"
MAX_ID_LENGTH = 128


class RequestTelemetry:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics | None = None,
        requests_first: RequestsFirst | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.requests_first = requests_first
        # A made-up ID is this process's random prefix and a counter: unique
        # across processes without a system call per request.
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = b""
        received = 0
        for name, value in scope["headers"]:
            if name == HEADER:
                incoming = value
            elif name == CONTENT_LENGTH:
                received = int(value) if value.isdigit() else 0
        rid = (
            incoming.decode("latin-1")[:MAX_ID_LENGTH]
            if incoming and incoming.isascii()
            else f"{self._prefix}{next(self._counter):016x}"
        )
        raw = rid.encode("latin-1")
        status = 500  # what an exception that escapes the app becomes
        sent = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                sent = content_length(headers)
                message["headers"] = [*headers, (HEADER, raw)]
            await send(message)

        token = request_id.set(rid)
        scope["request_id"] = rid  # for the error handler, which runs outside us
        first = self.requests_first
        if first is not None:
            first.started()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if first is not None:
                first.finished()
            request_id.reset(token)
            if self.metrics is not None:
                self.metrics.record(scope, status, received, sent, time.perf_counter() - start)
