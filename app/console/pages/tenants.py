"""Tenants (global admins): the list, `default` first, where the console works
(the tenant switcher), and signed links into a tenant's portal."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.security import COOKIE
from app.console.web import Pages, mutation, redirect, services, session_of
from app.domain.portal import EXPIRES_DEFAULT
from app.domain.tenants import DEFAULT_TENANT
from app.services.console import Session
from app.services.container import Services

PAGE_SIZE = 100


def public_base(svc: Services, request: Request) -> str:
    """Where links point: ``EVENTRELAY_PUBLIC_URL``, else this request's origin."""
    configured = svc.settings.public_url
    return (configured or f"{request.url.scheme}://{request.url.netloc}").rstrip("/")


async def portal_url(svc: Services, request: Request, tenant_id: str, expires_in: int) -> Any:
    params, expires_at = await svc.console.portal_link(tenant_id, expires_in)
    return f"{public_base(svc, request)}/console/portal?{urlencode(params)}", expires_at


def routes(pages: Pages) -> list[Route]:
    async def page(request: Request, session: Session, **context: Any) -> Response:
        svc = services(request)
        after = request.query_params.get("after") or None
        tenants, last = await svc.tenants.list_page(after_id=after, limit=PAGE_SIZE)
        tenants.sort(key=lambda t: t.id != DEFAULT_TENANT)  # `default` first
        return pages.render(
            request, "tenants.html", session, tenants=tenants, next_after=last, **context
        )

    async def listing(request: Request) -> Response:
        session = await session_of(request, global_only=True)
        return await page(request, session, link=None)

    async def choose(request: Request) -> Response:
        """The tenant switcher: the console works in this tenant from now on."""
        session, _ = await mutation(request, global_only=True)
        svc = services(request)
        tenant = await svc.tenants.get(request.path_params["tenant_id"])
        await svc.console.choose_tenant(request.cookies.get(COOKIE, ""), tenant.id)
        return redirect("/")

    async def portal_link(request: Request) -> Response:
        session, _ = await mutation(request, global_only=True)
        svc = services(request)
        tenant = await svc.tenants.get(request.path_params["tenant_id"])
        url, expires_at = await portal_url(svc, request, tenant.id, EXPIRES_DEFAULT)
        link = {"tenant": tenant.id, "url": url, "expires_at": expires_at}
        return await page(request, session, link=link)

    return [
        Route("/tenants", listing, methods=["GET"]),
        Route("/tenants/{tenant_id}/choose", choose, methods=["POST"]),
        Route("/tenants/{tenant_id}/portal-link", portal_link, methods=["POST"]),
    ]
