"""Tenants (global admins)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.web import Pages, session_of


def routes(pages: Pages) -> list[Route]:
    async def listing(request: Request) -> Response:
        session = await session_of(request)
        return pages.render(request, "tenants.html", session)

    return [Route("/tenants", listing, methods=["GET"])]
