"""``build_console``: the console's ASGI application, mounted at ``/console``.

Its own Starlette app (not routes on the API) so that its pages stay out of
the OpenAPI document, its errors are HTML rather than problem details, and
every response it sends carries its security headers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from app.console.pages import (
    auth,
    dlq,
    event_types,
    events,
    overview,
    subscriptions,
    tenants,
    tokens,
)
from app.console.security import COOKIE, COOKIE_PATH, SecurityHeaders
from app.console.web import Pages, SignInRequired, services
from app.errors import EventRelayError, NotFound
from app.services.container import Services

STATIC = Path(__file__).parent / "static"


def build_console(services_of: Callable[[], Services]) -> SecurityHeaders:
    pages = Pages()
    routes = [
        *auth.routes(pages),
        *overview.routes(pages),
        *events.routes(pages),
        *subscriptions.routes(pages),
        *dlq.routes(pages),
        *event_types.routes(pages),
        *tenants.routes(pages),
        *tokens.routes(pages),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def sign_in_first(request: Request, _: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = COOKIE_PATH
        response = RedirectResponse(
            f"{COOKIE_PATH}/sign-in?next={quote(target, safe='/')}", status_code=303
        )
        if COOKIE in request.cookies:
            response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response

    async def app_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EventRelayError)
        session = await services(request).console.resolve(request.cookies.get(COOKIE))
        return pages.error(request, exc, session)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return await app_error(request, NotFound("there is no such page"))
        error = EventRelayError(exc.detail)
        error.status = exc.status_code
        error.title = exc.detail
        return pages.error(request, error, None)

    app = Starlette(
        routes=routes,
        exception_handlers={
            SignInRequired: sign_in_first,
            EventRelayError: app_error,
            HTTPException: http_error,
        },
    )
    app.state.services_of = services_of
    return SecurityHeaders(app, static_prefix=f"{COOKIE_PATH}/static/")
