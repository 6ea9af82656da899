"""The overview: ingest, delivery success, lag, the DLQ, failing subscriptions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.web import Pages, services, session_of


def routes(pages: Pages) -> list[Route]:
    async def overview(request: Request) -> Response:
        session = await session_of(request)
        view = await services(request).overview.overview(session.tenant)
        return pages.render(request, "overview.html", session, view=view)

    return [Route("/", overview, methods=["GET"])]
