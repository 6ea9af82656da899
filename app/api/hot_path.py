"""``POST /v1/events`` without the routing machinery around it.

Ingest is the one route whose cost decides what a process can take. Between
the middlewares and the endpoint, FastAPI runs its exception middleware, an
exit stack, route matching over every route, the endpoint wrapper and the
dependency solver: on this machine as much again as the endpoint's own HTTP
work (BENCHMARKS.md, "Ingest"). This middleware sits just inside the request-ID
and metrics middlewares and calls the very same endpoint function
(:func:`app.api.events.post_event`) with the same error handlers, so the
answer to any request is what the route would have given; FastAPI keeps the
route for the OpenAPI document and for every other method and path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import problems
from app.errors import EventRelayError

Endpoint = Callable[[Request], Awaitable[Response]]


class IngestHotPath:
    """Serve ``method path`` with ``endpoint``; pass everything else on to ``app``."""

    def __init__(
        self, app: ASGIApp, *, method: str, path: str, endpoint: Endpoint, route: BaseRoute
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.endpoint = endpoint
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # what the router would set (the metrics label it)
        request = Request(scope, receive)
        try:
            response = await self.endpoint(request)
        except EventRelayError as exc:
            response = await problems.domain_error(request, exc)
        except HTTPException as exc:
            response = await problems.http_error(request, exc)
        # Anything else propagates to ServerErrorMiddleware, as from the route.
        await response(scope, receive, send)


def find_route(routes: list[BaseRoute], method: str, path: str) -> BaseRoute:
    for route in routes:
        if getattr(route, "path", None) == path and method in (getattr(route, "methods", ()) or ()):
            return route
    raise LookupError(f"no route for {method} {path}")
