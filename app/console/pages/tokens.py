"""API tokens: the active ones, issue one (shown once), revoke."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.web import Pages, mutation, redirect, services, session_of
from app.domain.tokens import Scope

PAGE_SIZE = 100


def routes(pages: Pages) -> list[Route]:
    async def listing(request: Request) -> Response:
        session = await session_of(request)
        after = request.query_params.get("after") or None
        tokens, last = await services(request).auth.list_page(after_id=after, limit=PAGE_SIZE)
        return pages.render(
            request,
            "tokens.html",
            session,
            tokens=tokens,
            next_after=last,
            issued=None,
            revoked=request.query_params.get("revoked") == "1",
        )

    async def issue(request: Request) -> Response:
        session, form = await mutation(request)
        svc = services(request)
        scope = Scope.ADMIN if form.get("scope") == "admin" else Scope.INGEST
        issued = await svc.auth.issue(scope, (form.optional("description") or "")[:1000] or None)
        tokens, last = await svc.auth.list_page(after_id=None, limit=PAGE_SIZE)
        return pages.render(
            request,
            "tokens.html",
            session,
            status=201,
            tokens=tokens,
            next_after=last,
            issued=issued,
            revoked=False,
        )

    async def revoke(request: Request) -> Response:
        await mutation(request)
        await services(request).auth.revoke(request.path_params["token_id"])
        return redirect("/tokens", revoked=1)

    return [
        Route("/tokens", listing, methods=["GET"]),
        Route("/tokens", issue, methods=["POST"]),
        Route("/tokens/{token_id}/revoke", revoke, methods=["POST"]),
    ]
