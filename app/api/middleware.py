"""Request IDs: taken from ``X-Request-ID`` or made up, echoed back, put on every log line."""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging import request_id

HEADER = b"x-request-id"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == HEADER), b"")
        value = incoming.decode("latin-1")[:128] if incoming.isascii() and incoming else ""
        rid = value or os.urandom(16).hex()
        token = request_id.set(rid)
        scope["request_id"] = rid  # for the error handler, which runs outside us
        raw = rid.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, raw)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
