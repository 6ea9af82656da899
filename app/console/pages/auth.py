"""Signing in with an admin token, and out."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from app.console.security import COOKIE, COOKIE_PATH, cookie_attributes, portal_csp, safe_next
from app.console.web import Pages, mutation, read_form, refuse_cross_site, services
from app.errors import Forbidden, Unauthorized
from app.services.console import SESSION_LIFETIME


def routes(pages: Pages) -> list[Route]:
    async def sign_in_page(request: Request) -> Response:
        svc = services(request)
        if await svc.console.resolve(request.cookies.get(COOKIE)) is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
        return pages.render(
            request, "sign_in.html", None, next=safe_next(request.query_params.get("next"))
        )

    async def sign_in(request: Request) -> Response:
        refuse_cross_site(request)
        form = await read_form(request)
        target = safe_next(form.get("next"))
        try:
            new = await services(request).console.sign_in(form.get("token"))
        except (Unauthorized, Forbidden) as exc:
            message = (
                "That token is not valid (or has been revoked)."
                if isinstance(exc, Unauthorized)
                else exc.detail
            )
            return pages.render(
                request, "sign_in.html", None, status=exc.status, next=target, message=message
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            value=new.session_id,
            **cookie_attributes(  # type: ignore[arg-type]
                secure=request.url.scheme == "https",
                max_age=int(SESSION_LIFETIME.total_seconds()),
            ),
        )
        return response

    async def sign_out(request: Request) -> Response:
        await mutation(request)
        await services(request).console.sign_out(request.cookies.get(COOKIE, ""))
        response = RedirectResponse(f"{COOKIE_PATH}/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response

    async def portal(request: Request) -> Response:
        """Following a portal link, from any site: a session confined to its
        tenant until the link expires. The page then moves on by itself (a
        same-site navigation, so the Strict cookie goes along)."""
        svc = services(request)
        q = request.query_params
        new, tenant_id = await svc.console.open_portal(
            q.get("tenant"), q.get("expires"), q.get("sig")
        )
        if await svc.tenants.active(tenant_id) is None:
            raise Forbidden("the portal link's tenant no longer exists")
        remaining = (new.expires_at - datetime.now(UTC)).total_seconds()
        response = pages.render(request, "portal.html", None)
        response.set_cookie(
            value=new.session_id,
            **cookie_attributes(  # type: ignore[arg-type]
                secure=request.url.scheme == "https",
                max_age=max(1, int(remaining)),
                framed=bool(svc.settings.portal_frame_ancestors),
            ),
        )
        response.headers["content-security-policy"] = portal_csp(
            svc.settings.portal_frame_ancestors
        )
        response.headers["referrer-policy"] = "no-referrer"  # the link is a credential
        return response

    return [
        Route("/portal", portal, methods=["GET"]),
        Route("/sign-in", sign_in_page, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
    ]
