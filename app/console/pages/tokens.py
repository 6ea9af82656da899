"""API tokens: the active ones, issue one (shown once), revoke. A tenant's
admin sees and issues its own tenant's; a global admin sees all, and issues
global tokens or tokens of the tenant the console is on."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.web import Pages, mutation, redirect, services, session_of
from app.domain.tokens import Scope
from app.errors import NotFound
from app.services.console import Session

PAGE_SIZE = 100


def listed_tenant(session: Session) -> str | None:
    return None if session.is_global else session.tenant


def routes(pages: Pages) -> list[Route]:
    async def page(request: Request, session: Session, **context: Any) -> Response:
        after = request.query_params.get("after") or None
        tokens, last = await services(request).auth.list_page(
            tenant_id=listed_tenant(session), after_id=after, limit=PAGE_SIZE
        )
        return pages.render(
            request, "tokens.html", session, tokens=tokens, next_after=last, **context
        )

    async def listing(request: Request) -> Response:
        session = await session_of(request, portal=False)
        revoked = request.query_params.get("revoked") == "1"
        return await page(request, session, issued=None, revoked=revoked)

    async def issue(request: Request) -> Response:
        session, form = await mutation(request, portal=False)
        scope = Scope.ADMIN if form.get("scope") == "admin" else Scope.INGEST
        tenant_id: str | None = session.tenant
        if session.is_global and form.get("tenant") == "global":
            tenant_id = None
        description = (form.optional("description") or "")[:1000] or None
        issued = await services(request).auth.issue(scope, description, tenant_id)
        response = await page(request, session, issued=issued, revoked=False)
        response.status_code = 201
        return response

    async def revoke(request: Request) -> Response:
        session, _ = await mutation(request, portal=False)
        token_id = request.path_params["token_id"]
        if token_id == session.token_id:
            raise NotFound("a session cannot revoke its own token: sign in with another")
        await services(request).auth.revoke(token_id, listed_tenant(session))
        return redirect("/tokens", revoked=1)

    return [
        Route("/tokens", listing, methods=["GET"]),
        Route("/tokens", issue, methods=["POST"]),
        Route("/tokens/{token_id}/revoke", revoke, methods=["POST"]),
    ]
